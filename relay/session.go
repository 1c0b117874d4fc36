package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/gorilla/websocket"
	"github.com/oklog/ulid/v2"

	"github.com/stompgate/stompgate/auth"
	"github.com/stompgate/stompgate/config"
	"github.com/stompgate/stompgate/relay/broker"
	"github.com/stompgate/stompgate/stomp"
)

// sessionEnv is what sessions need from their server. Built once by
// NewServer, shared by every session, read-only.
type sessionEnv struct {
	cfg      *config.Edge
	limits   stomp.Limits
	guard    Guard
	verifier *auth.Verifier
	rules    *auth.Rules
	broker   broker.Broker
	journal  Journal // nil: x-resume-after is refused
	rates    *auth.RateLimits
	users    *userSlots
	metrics  *Metrics
	clock    Clock
	trace    frameTrace
	version  string // CONNECTED's server header
	// brokerFailed reports that the broker looked unreachable (readiness).
	brokerFailed func(error)
}

// Session is one client's STOMP session: the state machine run by the
// goroutine that reads the WebSocket. It owns the session's protocol state
// (credentials, subscriptions, the broker side); its Outbox owns the
// socket's writes. See doc.go for the goroutine layout.
type Session struct {
	env  *sessionEnv
	id   string
	wire wire
	out  *Outbox
	log  *slog.Logger
	ctx  context.Context // ends when the session does
	stop context.CancelFunc

	upgradeToken string // from the upgrade request, if any

	// Read by other goroutines (sink callbacks, Server.Revoke).
	version atomic.Int32                // negotiated stomp.Version, 0 before CONNECT
	creds   atomic.Pointer[Credentials] // nil before CONNECT; replaced on refresh
	// closeAt is when an expired token's session ends (exp + grace), Unix
	// nanoseconds on the session clock; a refresh moves it.
	closeAt           atomic.Int64
	disconnectReceipt atomic.Pointer[string]
	closeOnce         sync.Once
	resumes           resumes // subscriptions switching from replay to live

	// Owned by the reader goroutine.
	parser    *stomp.Parser
	connected bool
	limiter   *auth.SessionLimiter
	subs      map[string]subscription // by subscription id
	bs        broker.Session          // nil until CONNECT succeeded
	userSlot  string                  // subject whose per-user slot this session holds
	timers    []Timer                 // expiry and DISCONNECT fallback, stopped at the end
	expiry    Timer
	readLimit time.Duration // client silence allowed before it is a zombie

	readerDone chan struct{}
}

// subscription is one entry of the session's subscription table.
type subscription struct {
	dest auth.Destination
	ack  broker.AckMode
}

// newWSSession is a session on a WebSocket whose socket is bc.
func newWSSession(env *sessionEnv, base context.Context, ws *websocket.Conn, bc *bufConn, upgradeToken string, log *slog.Logger) *Session {
	s := newSession(env, base, wsWire{ws: ws, bc: bc}, upgradeToken, log)
	bc.beforeRead = s.flushBroker
	ws.SetPingHandler(func(data string) error {
		s.out.Pong([]byte(data))
		return nil
	})
	ws.SetCloseHandler(func(int, string) error { return nil })
	return s
}

func newSession(env *sessionEnv, base context.Context, w wire, upgradeToken string, log *slog.Logger) *Session {
	ctx, stop := context.WithCancel(base)
	s := &Session{
		env:          env,
		id:           ulid.Make().String(),
		wire:         w,
		ctx:          ctx,
		stop:         stop,
		upgradeToken: upgradeToken,
		parser:       stomp.NewParser(env.limits, stomp.ClientCommands),
		subs:         map[string]subscription{},
		readLimit:    env.cfg.ConnectTimeout,
		readerDone:   make(chan struct{}),
	}
	s.log = log.With("session", s.id)
	s.out = newOutbox(w, env.cfg.SendBufferBytes, env.cfg.SendTimeLimit, env.metrics, s.readerDone)
	s.out.overflow = func(queued int) {
		s.close(ReasonSlowConsumer, fmt.Sprintf("client did not read %d queued bytes fast enough", queued))
	}
	s.out.aborted = func(r CloseReason) {
		if r == ReasonSendTimeout {
			env.metrics.Rejections.WithLabelValues(CodeSlowConsumer).Inc()
		}
		s.closeWith(r, nil)
		s.stop()
	}
	return s
}

// serve runs the session to its end; it returns when every goroutine the
// session started has finished.
func (s *Session) serve() {
	go s.out.Run()
	s.readLoop()
	s.close(ReasonClientClosed, "")
	<-s.out.Done()
	if s.bs != nil {
		s.bs.Close() // the broker redelivers what was not acked
		s.env.metrics.BrokerConnections.Dec()
	}
	for _, t := range s.timers {
		t.Stop()
	}
	if s.userSlot != "" {
		s.env.users.release(s.userSlot)
	}
	if s.limiter != nil {
		s.limiter.Close()
	}
	s.stop()
}

func (s *Session) ver() stomp.Version { return stomp.Version(s.version.Load()) }

// close ends the session, once, for reason; reasons with an x-error-code
// send an ERROR frame with msg first.
func (s *Session) close(r CloseReason, msg string) {
	var final *frame.Frame
	if r.Code() != "" {
		final = errorFrame(r.Code(), msg)
	}
	s.closeWith(r, final)
}

// closeWith ends the session, once, writing final (an ERROR frame, or nil)
// after what is queued. A slow or silent client's queue is dropped.
func (s *Session) closeWith(r CloseReason, final *frame.Frame) {
	s.closeOnce.Do(func() {
		var data []byte
		if final != nil {
			data = stomp.AppendFrame(nil, final, s.ver())
			s.env.metrics.Rejections.WithLabelValues(r.Code()).Inc()
			s.env.trace.log(s.log, "out", final)
		}
		switch {
		case r.Expected():
			s.log.Debug("session closing", "reason", r.String())
		case final != nil:
			s.log.Info("session closing", "reason", r.String(), "message", final.Header.Get(frame.Message))
		default:
			s.log.Info("session closing", "reason", r.String())
		}
		s.env.metrics.SessionsClosed.WithLabelValues(r.String()).Inc()
		drop := r == ReasonSlowConsumer || r == ReasonHeartbeatTimeout || r == ReasonSendTimeout || r == ReasonWriteFailed
		s.out.Close(data, r.WSCode(), drop)
	})
}

func errorFrame(code, msg string) *frame.Frame {
	f := frame.New(frame.ERROR, frame.Message, msg, "x-error-code", code, frame.ContentType, "text/plain")
	f.Body = []byte(msg)
	return f
}

// send queues an edge-made frame for the client and flushes it.
func (s *Session) send(f *frame.Frame) error {
	s.env.trace.log(s.log, "out", f)
	if err := s.out.Enqueue(broker.NewFrame(stomp.AppendFrame(nil, f, s.ver()), f.Command, time.Time{})); err != nil {
		return err
	}
	s.out.Flush()
	return nil
}

// readLoop is the only goroutine that reads the WebSocket; it runs the
// state machine on every frame.
func (s *Session) readLoop() {
	defer close(s.readerDone)
	for {
		var deadline time.Time
		if s.readLimit > 0 {
			deadline = time.Now().Add(s.readLimit)
		}
		r, err := s.wire.next(deadline)
		if err != nil {
			switch {
			case s.out.Closing():
			case isTimeout(err) && !s.connected:
				s.close(ReasonUnauthenticated, "no CONNECT frame within "+s.env.cfg.ConnectTimeout.String())
				s.waitClosed()
			case isTimeout(err):
				s.close(ReasonHeartbeatTimeout, "")
			default: // errPeerClosed, or the connection broke: the client is gone
				s.close(ReasonClientClosed, "")
			}
			return
		}
		if s.out.Closing() {
			_, _ = io.Copy(io.Discard, r)
			continue
		}
		err = s.readMessage(r)
		var fe *stomp.FrameError
		var rf *Refusal
		switch {
		case err == nil, errors.Is(err, errClosing):
		case errors.As(err, &rf):
			s.close(rf.Reason, rf.Msg)
		case errors.As(err, &fe):
			s.close(reasonForCode(fe.Code), fe.Msg)
		default:
			s.close(ReasonReadFailed, "")
		}
	}
}

// waitClosed lets the reader idle until the outbox has closed the socket.
func (s *Session) waitClosed() {
	select {
	case <-s.out.Done():
	case <-time.After(3 * time.Second):
	}
}

// flushBroker sends what the reader handed the broker side; it runs before
// the reader may block on the client socket (bufConn.beforeRead).
func (s *Session) flushBroker() {
	if s.bs == nil || s.out.Closing() {
		return
	}
	if err := s.bs.Flush(); err != nil {
		s.brokerLost(err)
	}
}

// readBuffers hold a WebSocket message's bytes on their way to the
// parser, one per message being read: an idle session holds none.
var readBuffers = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// readMessage feeds one WebSocket message to the parser and handles every
// frame completed by it.
func (s *Session) readMessage(r io.Reader) error {
	bp := readBuffers.Get().(*[]byte)
	defer readBuffers.Put(bp)
	rbuf := *bp
	for {
		n, err := r.Read(rbuf)
		if n > 0 {
			s.parser.Feed(rbuf[:n])
			for f, perr := range s.parser.Frames() {
				if perr != nil {
					return perr
				}
				if herr := s.handle(f); herr != nil {
					return herr
				}
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// handle runs one client frame through the state machine. It returns a
// *Refusal to end the session with an ERROR, errClosing once the session
// is ending, or nil.
func (s *Session) handle(f *frame.Frame) error {
	s.env.metrics.frameIn(f.Command)
	s.env.trace.log(s.log, "in", f)
	if !s.connected {
		if f.Command != frame.CONNECT && f.Command != frame.STOMP {
			return refusal(ReasonBadFrame, "the first frame must be CONNECT or STOMP, not %s", f.Command)
		}
		return s.connect(f)
	}
	switch f.Command {
	case frame.SEND:
		return s.onSend(f)
	case frame.SUBSCRIBE:
		return s.onSubscribe(f)
	}
	if r := s.env.guard.Expiry(s.creds.Load(), f, s.env.clock.Now()); r != nil {
		return r
	}
	h := f.Header
	switch f.Command {
	case frame.CONNECT, frame.STOMP:
		return refusal(ReasonBadFrame, "already connected")
	case frame.UNSUBSCRIBE:
		return s.onUnsubscribe(f)
	case frame.ACK, frame.NACK:
		return s.onAck(f)
	case frame.BEGIN, frame.COMMIT, frame.ABORT:
		tx := h.Get(frame.Transaction)
		if tx == "" {
			return refusal(ReasonBadFrame, "%s needs a transaction header", f.Command)
		}
		switch f.Command {
		case frame.BEGIN:
			return s.brokerOp(s.bs.Begin(tx, h.Get(frame.Receipt)))
		case frame.COMMIT:
			return s.brokerOp(s.bs.Commit(tx, h.Get(frame.Receipt)))
		}
		return s.brokerOp(s.bs.Abort(tx, h.Get(frame.Receipt)))
	case frame.DISCONNECT:
		return s.onDisconnect(f)
	}
	return refusal(ReasonBadFrame, "unexpected %s", f.Command)
}

// brokerOp turns a failed broker operation into the end of the session.
func (s *Session) brokerOp(err error) error {
	if err != nil {
		s.brokerLost(err)
		return errClosing
	}
	return nil
}

// brokerLost ends the session for what the broker side reported.
func (s *Session) brokerLost(err error) {
	var be *broker.Error
	switch {
	case errors.As(err, &be):
		e := frame.New(frame.ERROR, frame.Message, be.Message, "x-error-code", CodeBroker)
		if be.ContentType != "" {
			e.Header.Set(frame.ContentType, be.ContentType)
		}
		if be.ReceiptID != "" {
			e.Header.Set(frame.ReceiptId, be.ReceiptID)
		}
		e.Body = be.Body
		s.closeWith(ReasonBroker, e)
	case errors.Is(err, broker.ErrRefused):
		s.close(ReasonForbidden, err.Error())
	case errors.Is(err, broker.ErrFrameTooLarge):
		// The broker is fine; this session cannot take the message.
		s.close(ReasonFrameTooLarge, "a message from the broker is larger than EDGE_BROKER_MAX_FRAME_BYTES")
	case errors.Is(err, broker.ErrBusy):
		// A capacity cap (EDGE_MAX_DEDICATED, a broker that blocks
		// publishers): the broker is fine, readiness is left alone.
		s.close(ReasonBrokerBusy, "the edge has no broker capacity left for this frame; retry later")
	default:
		if !s.out.Closing() {
			s.env.brokerFailed(err)
		}
		s.close(ReasonBrokerUnavailable, "lost the connection to the message broker")
	}
}

// negotiateVersion picks the highest version both sides speak (STOMP 1.2
// §Protocol Negotiation); no accept-version header means 1.0.
func negotiateVersion(accept string) (stomp.Version, bool) {
	if accept == "" {
		return stomp.V10, true
	}
	best := stomp.Version(0)
	for _, v := range strings.Split(accept, ",") {
		switch strings.TrimSpace(v) {
		case "1.2":
			best = max(best, stomp.V12)
		case "1.1":
			best = max(best, stomp.V11)
		case "1.0":
			best = max(best, stomp.V10)
		}
	}
	return best, best != 0
}

func (s *Session) connect(f *frame.Frame) error {
	v, ok := negotiateVersion(f.Header.Get(frame.AcceptVersion))
	if !ok {
		return refusal(ReasonBadFrame, "supported STOMP versions are 1.0, 1.1 and 1.2")
	}
	s.version.Store(int32(v))
	s.parser.Version = v
	cx, cy, err := frame.ParseHeartBeat(orDefault(f.Header.Get(frame.HeartBeat), "0,0"))
	if err != nil {
		return refusal(ReasonBadFrame, "invalid heart-beat header")
	}

	token := s.upgradeToken
	if token == "" {
		token, _ = auth.ConnectToken(f.Header)
	}
	c, rf := s.credentials(token)
	if rf != nil {
		return rf
	}
	if !s.env.users.acquire(c.Ident.Subject) {
		return refusal(ReasonTooManySessions, "more than %d sessions for this user", s.env.cfg.MaxSessionsPerUser)
	}
	s.userSlot = c.Ident.Subject
	s.limiter = s.env.rates.Session(c.Ident.Subject)
	s.log = s.log.With("sub", c.Ident.Subject)

	bs, err := s.env.broker.Open(s.ctx, broker.SessionInfo{ID: s.id, Subject: c.Ident.Subject, Version: v}, sessionSink{s})
	if err != nil {
		if errors.Is(err, broker.ErrBusy) {
			return refusal(ReasonBrokerBusy, "the edge has no broker capacity left for this session; retry later")
		}
		s.env.brokerFailed(err)
		s.log.Warn("broker open failed", "err", err)
		return refusal(ReasonBrokerUnavailable, "the message broker is unavailable; retry later")
	}
	s.bs = bs
	s.env.metrics.BrokerConnections.Inc()

	hb := s.env.cfg.Heartbeat
	var sendEvery, expectEvery time.Duration
	if hb > 0 && cy > 0 {
		sendEvery = max(hb, cy)
	}
	if hb > 0 && cx > 0 {
		expectEvery = max(hb, cx)
	}
	s.readLimit = expectEvery * 3 / 2
	if sendEvery > 0 {
		s.out.SetHeartbeat(sendEvery)
	}
	s.connected = true
	s.expiry = s.env.clock.AfterFunc(c.Ident.Expiry.Add(s.env.cfg.TokenExpiryGrace).Sub(s.env.clock.Now()), s.expire)
	s.timers = append(s.timers, s.expiry)

	offer := strconv.FormatInt(hb.Milliseconds(), 10)
	if hb == 0 || cx == 0 {
		offer = "0"
	}
	s.log.Debug("session connected", "version", v.String(), "heartbeat_out", sendEvery, "heartbeat_in", expectEvery)
	return s.send(frame.New(frame.CONNECTED,
		frame.Version, v.String(),
		frame.HeartBeat, strconv.FormatInt(sendEvery.Milliseconds(), 10)+","+offer,
		frame.Session, s.id,
		frame.Server, "stompgate/"+s.env.version,
		"user-name", c.Ident.Subject))
}

// credentials verifies a token and installs what it grants: at CONNECT
// and on refresh. The credentials are published before the revocation
// check, so a revocation landing in between is seen by one or the other.
func (s *Session) credentials(token string) (*Credentials, *Refusal) {
	ident, err := s.env.verifier.Verify(token)
	if err != nil {
		return nil, refusal(ReasonUnauthenticated, "%s", authMessage(err))
	}
	perms, err := auth.NewPermissions(ident, s.env.rules)
	if err != nil {
		return nil, refusal(ReasonUnauthenticated, "invalid token subject")
	}
	if prev := s.creds.Load(); prev != nil && prev.Ident.Subject != ident.Subject {
		return nil, refusal(ReasonForbidden, "the new token is for another subject")
	}
	if skipped := perms.Skipped(); len(skipped) > 0 {
		s.log.Warn("token scope entries ignored: they can never match a destination", "entries", skipped)
	}
	c := &Credentials{Ident: ident, Perms: perms}
	s.creds.Store(c)
	s.closeAt.Store(ident.Expiry.Add(s.env.cfg.TokenExpiryGrace).UnixNano())
	if r := s.env.guard.Revocation(c); r != nil {
		return nil, r
	}
	return c, nil
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// who returns the identity Server.Revoke matches against ("" before
// CONNECT).
func (s *Session) who() (sub, jti string) {
	if c := s.creds.Load(); c != nil {
		return c.Ident.Subject, c.Ident.TokenID
	}
	return "", ""
}

// expire runs on the expiry timer: it closes the session unless a refresh
// moved the deadline, in which case it waits for the new one.
func (s *Session) expire() {
	if left := time.Unix(0, s.closeAt.Load()).Sub(s.env.clock.Now()); left > 0 {
		s.expiry.Reset(left)
		return
	}
	s.close(ReasonTokenExpired, "token expired; SEND a fresh one to /edge/refresh before exp")
}

// onSend relays a SEND that passed the guard, with the identity stamped
// by the edge; /app/ destinations go to the journal's exchange.
func (s *Session) onSend(f *frame.Frame) error {
	c := s.creds.Load()
	d, wait, r := s.env.guard.Send(c, f, s.env.clock.Now(), s.limiter)
	if r != nil {
		return r
	}
	if d.Kind == auth.KindEdgeRefresh {
		return s.refresh(f)
	}
	if wait > 0 {
		// Backpressure: what was read so far leaves, then this socket is
		// not read until the budget allows.
		s.flushBroker()
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-s.ctx.Done():
			return errClosing
		}
	}
	auth.StampIdentity(f.Header, c.Ident.Subject)
	var route *broker.Route
	switch d.Kind {
	case auth.KindApp:
		// Journaled (SPEC §6): persisted before it is broadcast.
		route = &broker.Route{Exchange: broker.JournalExchange, Key: d.Name}
	case auth.KindUser:
		// Subject S's personal queue <name> (SPEC §5), on every edge.
		route = &broker.Route{Exchange: broker.UserExchange, Key: d.User + "/" + d.Name}
	}
	return s.brokerOp(s.bs.Send(broker.Message{
		Destination: d.Raw,
		Route:       route,
		Receipt:     f.Header.Get(frame.Receipt),
		Transaction: f.Header.Get(frame.Transaction),
		Header:      f.Header,
		Body:        f.Body,
	}))
}

// refresh replaces the session's token with the one in the body (same
// subject only). It is answered by the edge and never relayed.
func (s *Session) refresh(f *frame.Frame) error {
	c, r := s.credentials(strings.TrimSpace(string(f.Body)))
	if r != nil {
		r.Msg = "refresh: " + r.Msg
		return r
	}
	s.log.Debug("token refreshed", "exp", c.Ident.Expiry)
	if id := f.Header.Get(frame.Receipt); id != "" {
		return s.send(frame.New(frame.RECEIPT, frame.ReceiptId, id))
	}
	return nil
}

func (s *Session) onSubscribe(f *frame.Frame) error {
	id := f.Header.Get(frame.Id)
	if id == "" {
		if s.ver() >= stomp.V11 {
			return refusal(ReasonBadFrame, "SUBSCRIBE needs an id header")
		}
		// STOMP 1.0: the destination names the subscription.
		id = f.Header.Get(frame.Destination)
	}
	_, replaces := s.subs[id]
	d, r := s.env.guard.Subscribe(s.creds.Load(), f, s.env.clock.Now(), len(s.subs), replaces)
	if r != nil {
		return r
	}
	mode, ok := broker.ParseAckMode(f.Header.Get(frame.Ack))
	if !ok {
		return refusal(ReasonBadFrame, "ack must be auto, client or client-individual")
	}
	f.Header.Set(frame.Id, id)
	var rs *resume
	receipt := f.Header.Get(frame.Receipt)
	if _, ok := f.Header.Contains(HeaderResumeAfter); ok {
		if d.Kind != auth.KindTopic || d.Wildcard() || !strings.HasPrefix(d.Raw, "/topic/") {
			return refusal(ReasonBadFrame, "x-resume-after needs one journaled stream: /topic/<key> without wildcards")
		}
		if rs, r = s.startResume(f, id, mode); r != nil {
			return r
		}
		f.Header.Set(frame.Receipt, rs.receipt)
	}
	var route *broker.Route
	if d.Kind == auth.KindUserQueue {
		// The caller's own personal queue <name> (SPEC §5).
		route = &broker.Route{Exchange: broker.UserExchange, Key: s.creds.Load().Ident.Subject + "/" + d.Name}
	}
	s.subs[id] = subscription{dest: d, ack: mode}
	err := s.brokerOp(s.bs.Subscribe(broker.Subscription{
		ID: id, Destination: d.Raw, Route: route, Ack: mode, Receipt: f.Header.Get(frame.Receipt), Header: f.Header,
	}))
	if err != nil || rs == nil {
		return err
	}
	return s.finishResume(rs, d.Raw, d.Name, receipt)
}

func (s *Session) onUnsubscribe(f *frame.Frame) error {
	id := f.Header.Get(frame.Id)
	if id == "" && s.ver() == stomp.V10 {
		id = f.Header.Get(frame.Destination)
	}
	if id == "" {
		return refusal(ReasonBadFrame, "UNSUBSCRIBE needs an id header")
	}
	delete(s.subs, id)
	if rs := s.resumes.get(id); rs != nil {
		s.resumes.remove(rs)
	}
	return s.brokerOp(s.bs.Unsubscribe(id, f.Header.Get(frame.Receipt)))
}

// onAck relays ACK and NACK, translating the client's version: STOMP 1.2
// names the delivery by id (the MESSAGE's ack header), 1.0 and 1.1 by
// message-id; RabbitMQ gives both the same value.
func (s *Session) onAck(f *frame.Frame) error {
	name := frame.Id
	if s.ver() < stomp.V12 {
		name = frame.MessageId
	}
	id := f.Header.Get(name)
	if id == "" {
		return refusal(ReasonBadFrame, "%s needs a %s header (STOMP %s)", f.Command, name, s.ver())
	}
	return s.brokerOp(s.bs.Ack(broker.Ack{
		ID:           id,
		Subscription: f.Header.Get(frame.Subscription),
		Transaction:  f.Header.Get(frame.Transaction),
		Receipt:      f.Header.Get(frame.Receipt),
		Nack:         f.Command == frame.NACK,
	}))
}

func (s *Session) onDisconnect(f *frame.Frame) error {
	receipt := f.Header.Get(frame.Receipt)
	if receipt == "" {
		s.close(ReasonClientDisconnect, "")
		return errClosing
	}
	// The broker confirms with the receipt (sessionSink.Receipt ends the
	// session). If it does not answer in time, the edge does.
	s.disconnectReceipt.Store(&receipt)
	if err := s.brokerOp(s.bs.Disconnect(receipt)); err != nil {
		return err
	}
	s.timers = append(s.timers, s.env.clock.AfterFunc(s.env.cfg.BrokerTimeout, func() {
		_ = s.send(frame.New(frame.RECEIPT, frame.ReceiptId, receipt))
		s.close(ReasonClientDisconnect, "")
	}))
	return nil
}

// sessionSink is the session's broker.Sink: it may be called from any
// goroutine and never waits on the client.
type sessionSink struct{ s *Session }

func (k sessionSink) Deliver(f broker.Frame) {
	s := k.s
	if s.resumes.n.Load() > 0 {
		if sub, seq, ok := deliveryInfo(f.Data, s.ver()); ok {
			if rs := s.resumes.get(sub); rs != nil {
				out, overflow, done := rs.filter(f.Data, seq, s.env.cfg.SendBufferBytes)
				if overflow {
					s.close(ReasonSlowConsumer, "live messages piled up faster than the resume could replay")
				}
				if done {
					s.resumes.remove(rs)
				}
				if out == nil {
					return
				}
				f = broker.NewFrame(out, f.Command, f.Received)
			}
		}
	}
	if s.env.trace.enabled {
		s.env.trace.logEncoded(s.log, f.Data, s.ver())
	}
	_ = s.out.Enqueue(f)
}

func (k sessionSink) Receipt(id string) {
	s := k.s
	if s.resumes.n.Load() > 0 {
		if rs := s.resumes.byReceipt(id); rs != nil {
			close(rs.ready) // the resume's own receipt: the client gets its own later
			return
		}
	}
	r := frame.New(frame.RECEIPT, frame.ReceiptId, id)
	s.env.trace.log(s.log, "out", r)
	if s.out.Enqueue(broker.NewFrame(stomp.AppendFrame(nil, r, s.ver()), frame.RECEIPT, time.Time{})) != nil {
		return
	}
	if d := s.disconnectReceipt.Load(); d != nil && *d == id {
		s.close(ReasonClientDisconnect, "")
	}
}

func (k sessionSink) Lost(err error) { k.s.brokerLost(err) }

func (k sessionSink) Idle() { k.s.out.Flush() }
