package auth

import (
	"errors"
	"fmt"
	"strings"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/oklog/ulid/v2"
)

// ErrForbidden is wrapped by header-firewall refusals; the wrapping error
// names the offending header. The relay answers with ERROR forbidden.
var ErrForbidden = errors.New("forbidden")

// Header names the firewall and identity stamping deal with.
const (
	HeaderUserID    = "x-user-id"
	HeaderMessageID = "amqp-message-id"
	HeaderReplyTo   = "reply-to"
)

// declaringHeaders declare or reshape broker resources (SPEC §3 header
// firewall). Besides the SPEC list it holds the other queue arguments
// RabbitMQ's STOMP adapter turns into x-arguments of a queue declaration, so
// a new broker feature cannot be reached around the list. persistent (a
// message property on SEND) and prefetch-count, ack, id, x-stream-offset
// (consumer properties on SUBSCRIBE) are not declaring.
var declaringHeaders = map[string]bool{
	"durable": true, "auto-delete": true, "exclusive": true,
	"x-queue-name": true, "x-queue-type": true,
	"x-max-priority": true, "x-message-ttl": true, "x-expires": true, "x-overflow": true,
	// also queue arguments RabbitMQ's STOMP adapter honours:
	"x-queue-mode": true, "x-single-active-consumer": true, "x-queue-master-locator": true,
	"x-queue-leader-locator": true, "x-delivery-limit": true, "x-initial-cluster-size": true,
	"x-max-age": true, "x-stream-max-segment-size-bytes": true, "x-stream-filter-size-bytes": true,
	"x-max-in-memory-length": true, "x-max-in-memory-bytes": true,
}

// declaringPrefixes: x-max-length, x-max-length-bytes, x-dead-letter-exchange,
// x-dead-letter-routing-key, x-dead-letter-strategy, ...
var declaringPrefixes = []string{"x-max-length", "x-dead-letter-"}

// Declaring reports whether a header name (any case) declares or reshapes a
// broker resource and therefore needs declare permission.
func Declaring(name string) bool {
	n := strings.ToLower(name)
	if declaringHeaders[n] {
		return true
	}
	for _, p := range declaringPrefixes {
		if strings.HasPrefix(n, p) {
			return true
		}
	}
	return false
}

// CheckHeaders applies the header firewall (SPEC §3) to the headers of a
// client SEND or SUBSCRIBE whose destination header parsed to dest, in
// place:
//
//   - user-id and app-id (any case) are removed: RabbitMQ would check
//     user-id against the edge's own broker login, and app-id would let a
//     client pass for an application;
//   - a declaring header (see Declaring; any case) passes only with declare
//     permission on dest, else an error wrapping ErrForbidden names it;
//   - a reply-to must parse (ParseDestination) and be a /temp-queue/ or have
//     subscribe permission, every occurrence of it;
//   - a repeated destination or reply-to header is refused: STOMP says the
//     first wins, but a broker that kept the last would route around the
//     check.
//
// The header count and line-size limits are not checked here: the frame
// parser enforces them on the wire, and decoding only shrinks headers.
// CheckHeaders does not stamp identity; the relay calls StampIdentity on a
// SEND after it.
func CheckHeaders(h *frame.Header, dest Destination, p *Permissions) error {
	var drop []string
	var dests, replies int
	for i := 0; i < h.Len(); i++ {
		k, v := h.GetAt(i)
		lk := strings.ToLower(k)
		switch {
		case lk == frame.Destination:
			if dests++; dests > 1 {
				return fmt.Errorf("%w: repeated destination header", ErrForbidden)
			}
		case lk == HeaderReplyTo:
			if replies++; replies > 1 {
				return fmt.Errorf("%w: repeated reply-to header", ErrForbidden)
			}
			rd, err := ParseDestination(v)
			if err != nil {
				return fmt.Errorf("%w: reply-to: %v", ErrForbidden, err)
			}
			if !p.CanDestination(Subscribe, rd) {
				return fmt.Errorf("%w: reply-to %q needs subscribe permission (or a /temp-queue/)", ErrForbidden, truncateString(v, 128))
			}
		case Declaring(lk):
			if !p.CanDestination(Declare, dest) {
				return fmt.Errorf("%w: header %q needs declare permission on this destination", ErrForbidden, truncateString(k, 64))
			}
		case lk == "user-id" || lk == "app-id":
			drop = append(drop, k)
		}
	}
	for _, k := range drop {
		h.Del(k)
	}
	return nil
}

// StampIdentity sets the edge's identity headers on a SEND bound for the
// broker (SPEC §3 Identity): every client x-user-id (any case, every
// occurrence), user-id and app-id is removed and x-user-id:<sub> added; the
// first non-empty amqp-message-id is kept as the idempotency key (other
// occurrences removed), and a new ULID is set when there is none.
func StampIdentity(h *frame.Header, sub string) {
	var drop []string
	msgID := ""
	for i := 0; i < h.Len(); i++ {
		k, v := h.GetAt(i)
		switch lk := strings.ToLower(k); {
		case lk == HeaderUserID || lk == "user-id" || lk == "app-id":
			drop = append(drop, k)
		case lk == HeaderMessageID:
			if msgID == "" && v != "" {
				msgID = v
			}
			drop = append(drop, k)
		}
	}
	for _, k := range drop {
		h.Del(k)
	}
	if msgID == "" {
		msgID = ulid.Make().String()
	}
	h.Add(HeaderMessageID, msgID)
	h.Add(HeaderUserID, sub)
}
