package relay

import (
	"errors"
	"fmt"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/stompgate/stompgate/auth"
)

// Refusal is a frame the edge refuses: the session ends with an ERROR
// frame carrying Reason's code and Msg.
type Refusal struct {
	Reason CloseReason
	Msg    string
}

func (r *Refusal) Error() string { return r.Reason.Code() + ": " + r.Msg }

func refusal(reason CloseReason, format string, args ...any) *Refusal {
	return &Refusal{Reason: reason, Msg: fmt.Sprintf(format, args...)}
}

// Credentials are what a session knows of its caller: the verified token
// and the permissions compiled from it. Replaced whole on refresh.
type Credentials struct {
	Ident auth.Identity
	Perms *auth.Permissions
}

// Limiter is the part of auth.SessionLimiter the guard uses.
type Limiter interface {
	Reserve(now time.Time, maxWait time.Duration) (wait time.Duration, ok bool)
}

// Guard runs SPEC §3's checks on one client frame, in the SPEC's order.
// It is pure apart from the rate budget it reserves: the answer depends
// only on the frame, the credentials, the time and the revocation list.
// Safe for concurrent use.
type Guard struct {
	// Revoked answers whether a subject or token id is revoked (nil:
	// revocation is off).
	Revoked func(sub, jti string) (bool, string)
	// RateMaxWait is EDGE_RATE_MAX_WAIT: a longer wait for the rate budget
	// is refused with rate_limited.
	RateMaxWait time.Duration
	// MaxSubscriptions is EDGE_MAX_SUBSCRIPTIONS.
	MaxSubscriptions int
}

// Expiry refuses every frame of an expired token but a SEND to
// /edge/refresh (the way out).
func (g *Guard) Expiry(c *Credentials, f *frame.Frame, now time.Time) *Refusal {
	if now.After(c.Ident.Expiry) && !isRefresh(f) {
		return refusal(ReasonTokenExpired, "token expired at %s; SEND a fresh one to %s", c.Ident.Expiry.UTC().Format(time.RFC3339), auth.EdgeRefresh)
	}
	return nil
}

// Revocation refuses a revoked subject or token id.
func (g *Guard) Revocation(c *Credentials) *Refusal {
	if g.Revoked == nil {
		return nil
	}
	if revoked, reason := g.Revoked(c.Ident.Subject, c.Ident.TokenID); revoked {
		return refusal(ReasonRevoked, "access revoked: %s", reason)
	}
	return nil
}

// Send checks a SEND: token not expired, not revoked, a valid destination
// with send permission, the header firewall (size was checked by the
// parser), then the rate budget. It returns the destination and how long
// the reader must wait for the budget (backpressure). A SEND to
// /edge/refresh passes with the destination only: the refresh checks the
// new token itself.
func (g *Guard) Send(c *Credentials, f *frame.Frame, now time.Time, rate Limiter) (auth.Destination, time.Duration, *Refusal) {
	if r := g.Expiry(c, f, now); r != nil {
		return auth.Destination{}, 0, r
	}
	if r := g.Revocation(c); r != nil {
		return auth.Destination{}, 0, r
	}
	d, r := destination(f)
	if r != nil {
		return d, 0, r
	}
	if d.Kind == auth.KindEdgeRefresh {
		return d, 0, nil
	}
	if !c.Perms.CanDestination(auth.Send, d) {
		return d, 0, refusal(ReasonForbidden, "no send permission for %s", d.Raw)
	}
	if err := auth.CheckHeaders(f.Header, d, c.Perms); err != nil {
		return d, 0, refusal(ReasonForbidden, "%s", err.Error())
	}
	wait, ok := rate.Reserve(now, g.RateMaxWait)
	if !ok {
		return d, 0, refusal(ReasonRateLimited, "sending faster than the allowed rate")
	}
	return d, wait, nil
}

// Subscribe checks a SUBSCRIBE: token not expired, a valid destination
// with subscribe permission, the header firewall, and the subscription
// limit (subs is how many the session holds; replacing an existing id
// does not count).
func (g *Guard) Subscribe(c *Credentials, f *frame.Frame, now time.Time, subs int, replaces bool) (auth.Destination, *Refusal) {
	if r := g.Expiry(c, f, now); r != nil {
		return auth.Destination{}, r
	}
	d, r := destination(f)
	if r != nil {
		return d, r
	}
	if d.Kind == auth.KindEdgeRefresh || !c.Perms.CanDestination(auth.Subscribe, d) {
		return d, refusal(ReasonForbidden, "no subscribe permission for %s", d.Raw)
	}
	if err := auth.CheckHeaders(f.Header, d, c.Perms); err != nil {
		return d, refusal(ReasonForbidden, "%s", err.Error())
	}
	if !replaces && subs >= g.MaxSubscriptions {
		return d, refusal(ReasonTooManySubscriptions, "at most %d subscriptions per session", g.MaxSubscriptions)
	}
	return d, nil
}

// destination parses a frame's destination header.
func destination(f *frame.Frame) (auth.Destination, *Refusal) {
	d, err := auth.ParseDestination(f.Header.Get(frame.Destination))
	if err != nil {
		return d, refusal(ReasonForbidden, "%s", err.Error())
	}
	return d, nil
}

func isRefresh(f *frame.Frame) bool {
	return f.Command == frame.SEND && f.Header.Get(frame.Destination) == auth.EdgeRefresh
}

// authMessage is the client-facing text for a token that did not verify.
func authMessage(err error) string {
	switch {
	case errors.Is(err, auth.ErrNoToken):
		return "no token: send Authorization: Bearer <jwt> (upgrade or CONNECT), access_token, or passcode"
	case errors.Is(err, auth.ErrTokenExpired):
		return "token expired"
	}
	return "invalid token"
}
