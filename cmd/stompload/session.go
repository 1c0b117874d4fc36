package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/golang-jwt/jwt/v5"

	"github.com/stompgate/stompgate/stomp"
	"github.com/stompgate/stompgate/stomp/stompws"
)

// openFailure says why open could not set up a session, in the terms the
// chat and storm reports count: the HTTP status of a refused upgrade (and
// its Retry-After), the x-error-code of an ERROR answer, or a kind of
// network failure.
type openFailure struct {
	Kind       string        // "http_503", "error" (see Code), "timeout", "dial", "closed"
	Code       string        // x-error-code of an ERROR answer to CONNECT or SUBSCRIBE
	RetryAfter time.Duration // from a refused upgrade's Retry-After header, 0 if none
	Err        error
}

func (f *openFailure) Error() string { return f.Err.Error() }

// open dials the URL, sends CONNECT as user (a JWT with scope, or the
// configured login) and subscribes to dest, waiting for CONNECTED and the
// receipt. Unlike dial and subscribe it keeps what a refusal said: the
// upgrade's status and Retry-After, an ERROR's x-error-code.
func open(ctx context.Context, c options, user, scope, dest string) (*stompws.Conn, *openFailure) {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	h := http.Header{}
	if c.Origin != "" {
		h.Set("Origin", c.Origin)
	}
	conn, resp, err := stompws.Dial(ctx, c.URL, stompws.Options{Header: h, HandshakeTimeout: c.Timeout, Limits: limits})
	if err != nil {
		f := &openFailure{Kind: "dial", Err: err}
		switch {
		case resp != nil:
			f.Kind = "http_" + strconv.Itoa(resp.StatusCode)
			if s, perr := strconv.Atoi(resp.Header.Get("Retry-After")); perr == nil && s >= 0 {
				f.RetryAfter = time.Duration(s) * time.Second
			}
			resp.Body.Close()
		case ctx.Err() != nil || isTimeout(err):
			f.Kind = "timeout"
		}
		return nil, f
	}
	hdr := []string{}
	if c.Vhost != "" {
		hdr = append(hdr, frame.Host, c.Vhost)
	}
	if c.TokenSecret != "" {
		tok, err := mintScoped(c, user, scope)
		if err != nil {
			conn.Close()
			return nil, &openFailure{Kind: "token", Err: err}
		}
		hdr = append(hdr, "Authorization", "Bearer "+tok)
	} else {
		hdr = append(hdr, frame.Login, c.Login, frame.Passcode, c.Passcode)
	}
	hdr = append(hdr, frame.AcceptVersion, "1.2,1.1,1.0", frame.HeartBeat, "0,0")
	deadline, _ := ctx.Deadline()
	f, fail := roundTrip(conn, frame.New(frame.CONNECT, hdr...), frame.CONNECTED, "", deadline)
	if fail != nil {
		conn.Close()
		return nil, fail
	}
	switch f.Header.Get(frame.Version) {
	case "1.2":
		conn.SetVersion(stomp.V12)
	case "1.1":
		conn.SetVersion(stomp.V11)
	default:
		conn.SetVersion(stomp.V10)
	}
	sub := frame.New(frame.SUBSCRIBE, frame.Id, "0", frame.Destination, dest, frame.Ack, "auto", frame.Receipt, "sub-0")
	if _, fail := roundTrip(conn, sub, frame.RECEIPT, "sub-0", deadline); fail != nil {
		conn.Close()
		return nil, fail
	}
	return conn, nil
}

// roundTrip sends f and reads until a want frame (with receipt-id receipt,
// if set) or an ERROR arrives, or deadline passes.
func roundTrip(conn *stompws.Conn, f *frame.Frame, want, receipt string, deadline time.Time) (*frame.Frame, *openFailure) {
	_ = conn.SetWriteDeadline(deadline)
	_ = conn.SetReadDeadline(deadline)
	defer func() {
		_ = conn.SetWriteDeadline(time.Time{})
		_ = conn.SetReadDeadline(time.Time{})
	}()
	err := conn.Send(f)
	if err == nil {
		err = conn.Flush()
	}
	if err != nil {
		return nil, netFailure(fmt.Errorf("send %s: %w", f.Command, err))
	}
	for {
		r, _, err := conn.ReadFrame()
		if err != nil {
			return nil, netFailure(fmt.Errorf("wait for %s: %w", want, err))
		}
		switch {
		case r.Command == want && (receipt == "" || r.Header.Get(frame.ReceiptId) == receipt):
			return r, nil
		case r.Command == frame.ERROR:
			code := errorCode(r)
			return nil, &openFailure{Kind: "error", Code: code,
				Err: fmt.Errorf("%s answered ERROR %s: %s", f.Command, code, r.Header.Get(frame.Message))}
		}
	}
}

func netFailure(err error) *openFailure {
	if isTimeout(err) {
		return &openFailure{Kind: "timeout", Err: err}
	}
	return &openFailure{Kind: "closed", Err: err}
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &t) && t.Timeout())
}

// errorCode is an ERROR frame's x-error-code, "none" if it has none.
func errorCode(f *frame.Frame) string {
	if c := f.Header.Get("x-error-code"); c != "" {
		return c
	}
	return "none"
}

func mintScoped(c options, user, scope string) (string, error) {
	claims := jwt.MapClaims{
		"sub":   user,
		"exp":   time.Now().Add(c.Warmup + c.Duration + c.Ramp + c.SpikeDuration + c.Drain + time.Hour).Unix(),
		"iat":   time.Now().Unix(),
		"jti":   fmt.Sprintf("%s-%s-%d", c.RunID, user, time.Now().UnixNano()),
		"scope": scope,
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(c.TokenSecret))
	if err != nil {
		return "", fmt.Errorf("mint token: %w", err)
	}
	return tok, nil
}

// tally counts errors by x-error-code and connect failures by kind, and
// keeps the first error for the report.
type tally struct {
	mu       sync.Mutex
	byCode   map[string]int64
	failures map[string]int64
	other    int64 // errors that are neither: a lost connection, a malformed message
	firstErr error
}

func newTally() *tally {
	return &tally{byCode: map[string]int64{}, failures: map[string]int64{}}
}

func (t *tally) note(err error) {
	if t.firstErr == nil {
		t.firstErr = err
	}
}

// failed counts a session that could not be opened.
func (t *tally) failed(f *openFailure) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if f.Kind == "error" {
		t.byCode[f.Code]++
	} else {
		t.failures[f.Kind]++
	}
	t.note(f.Err)
}

// errorFrame counts an ERROR frame received on an open session.
func (t *tally) errorFrame(code string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.byCode[code]++
	t.note(err)
}

// otherErr counts any other error.
func (t *tally) otherErr(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.other++
	t.note(err)
}

// counts returns copies of the maps, the total and the first error.
func (t *tally) counts() (byCode, failures map[string]int64, total int64, first string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	byCode, failures = map[string]int64{}, map[string]int64{}
	for k, v := range t.byCode {
		byCode[k] = v
		total += v
	}
	for k, v := range t.failures {
		failures[k] = v
		total += v
	}
	total += t.other
	if t.firstErr != nil {
		first = t.firstErr.Error()
	}
	return byCode, failures, total, first
}

// fmtCounts renders a count map as "a=1 b=2", sorted, or "none".
func fmtCounts(m map[string]int64) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	s := ""
	for i, k := range keys {
		if i > 0 {
			s += " "
		}
		s += k + "=" + strconv.FormatInt(m[k], 10)
	}
	return s
}
