package relay

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/igm/sockjs-go/v3/sockjs"

	"github.com/stompgate/stompgate/auth"
)

// SockJS (GET/POST /sockjs/...) carries the same sessions as /ws for
// browsers behind proxies that strip Upgrade: igm/sockjs-go serves the
// transports (websocket, xhr-streaming, xhr-polling, eventsource...), and
// each SockJS session runs a Session on a sockjsWire. Every request under
// /sockjs/ passes the Origin policy first, and a cookie token is only read
// with an allowed Origin, exactly as on /ws.

// sockJS returns the /sockjs/ handler.
func (s *Server) sockJS() http.Handler {
	opts := sockjs.DefaultOptions
	opts.HeartbeatDelay = s.cfg.Heartbeat
	if opts.HeartbeatDelay <= 0 {
		opts.HeartbeatDelay = 25 * time.Second
	}
	opts.WebsocketUpgrader = &s.upgrader
	// CORS headers only for allowed origins (the Origin policy below has
	// refused the others already).
	opts.CheckOrigin = func(r *http.Request) bool { return s.origins.Check(r.Header.Get("Origin")) == auth.OriginAllowed }
	h := sockjs.NewHandler("/sockjs", opts, s.serveSockJS)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := s.checkOrigin(w, r); !ok {
			return
		}
		h.ServeHTTP(w, r)
	})
}

// serveSockJS runs one SockJS session. Admission refusals close it with
// code 1013 (try again later), as there is no HTTP status to give.
func (s *Server) serveSockJS(sj sockjs.Session) {
	token, ok := s.sockJSToken(sj.Request())
	if !ok {
		_ = sj.Close(1008, "cookie authentication needs an allowed Origin")
		return
	}
	if reason, msg := s.admit(); reason != "" {
		s.metrics.HTTPRefused.WithLabelValues(reason).Inc()
		_ = sj.Close(1013, msg)
		return
	}
	sess := newSession(s.env, s.baseCtx, sockjsWire{sj: sj}, token, s.log)
	s.run(sess, func() { _ = sj.Close(1001, "shutting down") })
}

// sockJSToken is the token of the request that opened the session.
func (s *Server) sockJSToken(r *http.Request) (string, bool) {
	token, source := auth.UpgradeToken(r, s.cfg.TokenCookie)
	if source == auth.SourceCookie && s.origins.Check(r.Header.Get("Origin")) != auth.OriginAllowed {
		return "", false
	}
	return token, true
}

// sockjsWire is a SockJS session. SockJS carries text only: a frame whose
// body is not valid UTF-8 reaches the client with U+FFFD for each invalid
// byte (use /ws for binary bodies). It has no pings and no partial writes.
type sockjsWire struct{ sj sockjs.Session }

func (w sockjsWire) next(deadline time.Time) (io.Reader, error) {
	ctx := w.sj.Context()
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	msg, err := w.sj.RecvCtx(ctx)
	switch {
	case err == nil:
		return strings.NewReader(msg), nil
	case errors.Is(err, context.DeadlineExceeded) && w.sj.Context().Err() == nil:
		return nil, err // isTimeout: a silent client
	}
	return nil, errPeerClosed
}

func (w sockjsWire) write(batch []outFrame, _ [][]byte, _ time.Time) error {
	for i := range batch {
		if err := w.sj.Send(string(batch[i].Data)); err != nil {
			return err
		}
	}
	return nil
}

func (w sockjsWire) pending() bool { return false }

// sockjsCloseGrace is how long the close waits after the last frames: a
// polling transport takes what is queued only at its next request, and
// sockjs-go drops what is still queued when the session closes, so the
// DISCONNECT receipt or the final ERROR would be lost without it.
const sockjsCloseGrace = time.Second

func (w sockjsWire) finish(final []byte, code int, _ time.Time) bool {
	written := len(final) > 0 && w.sj.Send(string(final)) == nil
	t := time.NewTimer(sockjsCloseGrace)
	select {
	case <-t.C:
	case <-w.sj.Context().Done():
	}
	t.Stop()
	_ = w.sj.Close(uint32(code), "")
	return written
}

func (w sockjsWire) close() { _ = w.sj.Close(1000, "") }
