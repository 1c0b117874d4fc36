package relay

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/gorilla/websocket"
	"github.com/oklog/ulid/v2"

	"github.com/stompgate/stompgate/auth"
	"github.com/stompgate/stompgate/stomp"
)

// Session is one client's STOMP-over-WebSocket connection and its broker
// link. See doc.go for the goroutine layout. Fields are grouped by owner.
type Session struct {
	srv  *Server
	id   string
	ws   *websocket.Conn
	bc   *bufConn
	log  *slog.Logger
	ctx  context.Context
	stop context.CancelFunc

	// Set once before other goroutines read them.
	upgradeToken string
	version      atomic.Int32 // negotiated Version, 0 before CONNECT

	// Owned by the client reader goroutine (readLoop).
	parser    *stomp.Parser
	connected bool
	ident     auth.Identity
	perms     *auth.Permissions
	limiter   *auth.SessionLimiter
	subs      map[string]struct{}
	link      BrokerLink
	rbuf      []byte
	userSlot  string // subject whose per-user session slot this session holds
	expiry    *time.Timer
	readLimit time.Duration // client silence allowed before it is a zombie

	// wmu serialises writes to the WebSocket (gorilla allows one writer at a
	// time): the writer goroutine holds it for each batch, and the broker
	// reader takes it with TryLock for its fast path (deliver).
	wmu       sync.Mutex
	writeErr  error        // first write error; guarded by wmu
	lastWrite atomic.Int64 // Unix nanoseconds of the last write to the client

	// Outbound queue: producers are the client reader, the broker reader and
	// the server (drain); the consumer is the writer goroutine. Bounded by
	// Config.SendBufferBytes: a producer that would overflow it ends the
	// session with slow_consumer instead of waiting, so no producer ever
	// blocks on one slow browser.
	mu        sync.Mutex
	queue     []outFrame
	spare     []outFrame
	queued    int
	closing   bool
	final     []byte // ERROR frame written after the queue, before the close
	closeCode int
	pongs     [][]byte
	subject   string // identity for Server.Revoke, set at CONNECT and refresh
	tokenID   string
	// wake signals the writer that the queue changed. Capacity 1: signals
	// coalesce, and a send never blocks (select with default).
	wake chan struct{}
	// hbSet hands the negotiated edge→client heart-beat interval to the
	// writer once, at CONNECT. Capacity 1 so the reader never waits.
	hbSet chan time.Duration

	disconnectReceipt atomic.Pointer[string]
	// closeAt is when the session ends for an expired token (exp + grace),
	// in Unix nanoseconds; a refresh moves it.
	closeAt    atomic.Int64
	closeOnce  sync.Once
	readerDone chan struct{}
	writerDone chan struct{}
	brokerDone chan struct{}
}

type outFrame struct {
	data     []byte
	binary   bool
	command  string
	received time.Time // when the edge read it from the broker (zero for edge-made frames)
}

// bufConn puts a buffer between gorilla/websocket and the socket, so the
// writer goroutine can write every queued message and make one syscall.
// Only the writer goroutine writes (gorilla's own control replies are
// disabled by the session's ping and close handlers).
//
// Reads go through too: beforeRead runs in the reading goroutine whenever
// gorilla's read buffer is empty and it is about to read the socket (and
// possibly block). The session flushes its broker link there, so all the
// frames that arrived together leave in one write.
type bufConn struct {
	net.Conn
	w          *bufio.Writer
	beforeRead func()
}

func (c *bufConn) Write(p []byte) (int, error) { return c.w.Write(p) }

func (c *bufConn) Read(p []byte) (int, error) {
	if c.beforeRead != nil {
		c.beforeRead()
	}
	return c.Conn.Read(p)
}

var errSessionClosing = errors.New("session closing")

func newSession(srv *Server, ws *websocket.Conn, bc *bufConn, upgradeToken string, log *slog.Logger) *Session {
	ctx, stop := context.WithCancel(srv.baseCtx)
	s := &Session{
		srv:          srv,
		id:           ulid.Make().String(),
		ws:           ws,
		bc:           bc,
		ctx:          ctx,
		stop:         stop,
		upgradeToken: upgradeToken,
		parser:       stomp.NewParser(srv.limits, stomp.ClientCommands),
		subs:         map[string]struct{}{},
		rbuf:         make([]byte, 16<<10),
		wake:         make(chan struct{}, 1),
		hbSet:        make(chan time.Duration, 1),
		readerDone:   make(chan struct{}),
		writerDone:   make(chan struct{}),
		brokerDone:   make(chan struct{}),
		readLimit:    srv.cfg.ConnectTimeout,
	}
	s.log = log.With("session", s.id)
	bc.beforeRead = s.flushBroker
	ws.SetPingHandler(func(data string) error {
		s.mu.Lock()
		s.pongs = append(s.pongs, []byte(data))
		s.mu.Unlock()
		s.signal()
		return nil
	})
	ws.SetCloseHandler(func(int, string) error { return nil })
	return s
}

// serve runs the session to its end; it returns when every goroutine the
// session started has finished.
func (s *Session) serve() {
	go s.writeLoop()
	s.readLoop()
	s.end(nil, "client closed", false)
	<-s.writerDone
	if s.link != nil {
		s.link.Close()
		<-s.brokerDone
		s.srv.metrics.BrokerConnections.Dec()
	}
	if s.expiry != nil {
		s.expiry.Stop()
	}
	if s.userSlot != "" {
		s.srv.releaseUser(s.userSlot)
	}
	if s.limiter != nil {
		s.limiter.Close()
	}
	s.stop()
}

func (s *Session) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Session) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// fail ends the session with an ERROR frame carrying code.
func (s *Session) fail(code, msg string) {
	f := frame.New(frame.ERROR, frame.Message, msg, "x-error-code", code, frame.ContentType, "text/plain")
	f.Body = []byte(msg)
	s.end(f, code, code == CodeSlowConsumer)
}

// end starts closing the session, once: the writer writes what is queued
// (unless drop), then final, then a WebSocket close, then closes the socket.
func (s *Session) end(final *frame.Frame, reason string, drop bool) {
	s.closeOnce.Do(func() {
		var data []byte
		code := websocket.CloseNormalClosure
		if final != nil {
			data = stomp.AppendFrame(nil, final, stomp.Version(s.version.Load()))
			ec := final.Header.Get("x-error-code")
			s.srv.metrics.Rejections.WithLabelValues(ec).Inc()
			s.srv.logFrame(s.log, "out", final)
			switch ec {
			case CodeShuttingDown:
				code = websocket.CloseGoingAway
			case CodeBrokerUnavailable, CodeBroker:
				code = websocket.CloseInternalServerErr
			default:
				code = websocket.ClosePolicyViolation
			}
			s.log.Info("session closing", "code", ec, "reason", reason)
		} else {
			s.log.Debug("session closing", "reason", reason)
		}
		s.srv.metrics.SessionsClosed.WithLabelValues(closeReasonLabel(final, reason)).Inc()
		s.mu.Lock()
		s.closing, s.final, s.closeCode = true, data, code
		if drop {
			s.srv.metrics.OutboundBytes.Sub(float64(s.queued))
			s.queue, s.queued = s.queue[:0], 0
		}
		s.mu.Unlock()
		s.signal()
	})
}

// reasonSendTimeout ends a session whose socket did not take a write within
// EDGE_SEND_TIME_LIMIT: a slow consumer, though no ERROR can reach it.
const reasonSendTimeout = "client did not drain within the send time limit"

func closeReasonLabel(final *frame.Frame, reason string) string {
	if final != nil {
		return final.Header.Get("x-error-code")
	}
	switch reason {
	case reasonSendTimeout:
		return CodeSlowConsumer
	case "client disconnect", "heart-beat timeout", "client closed":
		return strings.ReplaceAll(reason, " ", "_")
	}
	return "other"
}

// enqueue hands an encoded frame to the writer. The broker reader passes
// wake=false and wakes the writer once per batch read from the broker.
func (s *Session) enqueue(data []byte, command string, received time.Time, wake bool) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return errSessionClosing
	}
	if s.queued+len(data) > s.srv.cfg.SendBufferBytes {
		queued := s.queued
		s.mu.Unlock()
		s.fail(CodeSlowConsumer, fmt.Sprintf("client did not read %d queued bytes fast enough", queued))
		return errSessionClosing
	}
	s.queue = append(s.queue, outFrame{data: data, binary: !utf8.Valid(data), command: command, received: received})
	s.queued += len(data)
	s.mu.Unlock()
	s.srv.metrics.OutboundBytes.Add(float64(len(data)))
	if wake {
		s.signal()
	}
	return nil
}

// send encodes an edge-made frame for the client.
func (s *Session) send(f *frame.Frame) error {
	s.srv.logFrame(s.log, "out", f)
	return s.enqueue(stomp.AppendFrame(nil, f, stomp.Version(s.version.Load())), f.Command, time.Time{}, true)
}

// writeLoop is the only goroutine that writes the WebSocket.
func (s *Session) writeLoop() {
	defer close(s.writerDone)
	// Heart-beats: tick at half the negotiated interval and send an EOL when
	// nothing was written for half of it, so the client never waits more
	// than the interval it was promised.
	var (
		beat  <-chan time.Time
		every time.Duration
	)
	s.lastWrite.Store(time.Now().UnixNano())
	for {
		select {
		case <-s.wake:
		case every = <-s.hbSet:
			t := time.NewTicker(every / 2)
			defer t.Stop()
			beat = t.C
			continue
		case now := <-beat:
			if now.Sub(time.Unix(0, s.lastWrite.Load())) < every/2 {
				continue
			}
			s.wmu.Lock()
			_ = s.ws.SetWriteDeadline(now.Add(s.srv.cfg.SendTimeLimit))
			err := s.ws.WriteMessage(websocket.TextMessage, []byte{'\n'})
			if err == nil {
				err = s.bc.w.Flush()
			}
			s.wmu.Unlock()
			if err != nil {
				s.abort("heart-beat write failed")
				return
			}
			s.lastWrite.Store(now.UnixNano())
			continue
		}
		s.wmu.Lock()
		closing, final, code, err := s.writeQueued()
		if err == nil && closing {
			s.finish(final, code)
		}
		s.wmu.Unlock()
		if err != nil {
			if isTimeout(err) {
				s.srv.metrics.Rejections.WithLabelValues(CodeSlowConsumer).Inc()
				s.abort(reasonSendTimeout)
			} else {
				s.abort("write failed: " + err.Error())
			}
			return
		}
		if closing {
			return
		}
	}
}

// deliver is the broker reader's fast path (brokerLoop's idle hook): when
// nobody is writing, it writes what is queued itself instead of waking the
// writer, saving a goroutine hand-off per batch. Anything it cannot finish
// (a close, a write error) is left to the writer.
func (s *Session) deliver() {
	if !s.wmu.TryLock() {
		s.signal()
		return
	}
	s.mu.Lock()
	handOff := s.closing || len(s.pongs) > 0
	s.mu.Unlock()
	if handOff {
		s.wmu.Unlock()
		s.signal()
		return
	}
	_, _, _, err := s.writeQueued()
	s.wmu.Unlock()
	if err != nil {
		s.signal()
	}
}

// writeQueued writes and flushes everything queued, with a write deadline
// of EDGE_SEND_TIME_LIMIT, and reports whether the session is closing. The
// caller holds wmu. A write error is sticky: gorilla's connection is
// unusable after one, so later calls return it at once.
func (s *Session) writeQueued() (closing bool, final []byte, code int, err error) {
	if s.writeErr != nil {
		return false, nil, 0, s.writeErr
	}
	s.mu.Lock()
	batch, queued, pongs := s.queue, s.queued, s.pongs
	s.queue, s.queued, s.pongs = s.spare[:0], 0, nil
	closing, final, code = s.closing, s.final, s.closeCode
	s.mu.Unlock()

	deadline := time.Now().Add(s.srv.cfg.SendTimeLimit)
	_ = s.ws.SetWriteDeadline(deadline)
	err = s.writeBatch(batch, pongs, deadline)
	s.srv.metrics.OutboundBytes.Sub(float64(queued))
	for i := range batch {
		batch[i] = outFrame{}
	}
	s.mu.Lock()
	s.spare = batch[:0]
	s.mu.Unlock()
	if len(batch) > 0 {
		s.lastWrite.Store(time.Now().UnixNano())
	}
	s.writeErr = err
	return closing, final, code, err
}

func (s *Session) writeBatch(batch []outFrame, pongs [][]byte, deadline time.Time) error {
	for _, p := range pongs {
		if err := s.ws.WriteControl(websocket.PongMessage, p, deadline); err != nil {
			return err
		}
	}
	for i := range batch {
		mt := websocket.TextMessage
		if batch[i].binary {
			mt = websocket.BinaryMessage
		}
		if err := s.ws.WriteMessage(mt, batch[i].data); err != nil {
			return err
		}
		s.srv.metrics.frameOut(batch[i].command)
	}
	if err := s.bc.w.Flush(); err != nil {
		return err
	}
	if len(batch) > 0 {
		now := time.Now()
		for i := range batch {
			if !batch[i].received.IsZero() {
				s.srv.metrics.RelayLatency.Observe(now.Sub(batch[i].received).Seconds())
			}
		}
	}
	return nil
}

// finish writes the final frame and a close message, then gives the client
// a moment to answer the close before the socket is closed, so the final
// frames are read rather than lost to a TCP reset.
func (s *Session) finish(final []byte, code int) {
	deadline := time.Now().Add(s.srv.cfg.SendTimeLimit)
	if len(final) > 0 {
		mt := websocket.TextMessage
		if !utf8.Valid(final) {
			mt = websocket.BinaryMessage
		}
		_ = s.ws.SetWriteDeadline(deadline)
		if s.ws.WriteMessage(mt, final) == nil {
			s.srv.metrics.frameOut(frame.ERROR)
		}
	}
	_ = s.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), deadline)
	_ = s.bc.w.Flush()
	s.stop()
	select {
	case <-s.readerDone:
	case <-time.After(2 * time.Second):
	}
	s.bc.Close()
}

// abort closes the socket at once (the client cannot be written to).
func (s *Session) abort(reason string) {
	s.end(nil, reason, true)
	s.log.Info("session aborted", "reason", reason)
	s.stop()
	s.bc.Close()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// readLoop is the only goroutine that reads the WebSocket; it also owns the
// session's protocol state and writes to the broker link.
func (s *Session) readLoop() {
	defer close(s.readerDone)
	for {
		if s.readLimit > 0 {
			_ = s.ws.SetReadDeadline(time.Now().Add(s.readLimit))
		} else {
			_ = s.ws.SetReadDeadline(time.Time{})
		}
		_, r, err := s.ws.NextReader()
		if err != nil {
			switch {
			case s.isClosing():
			case isTimeout(err) && !s.connected:
				s.fail(CodeUnauthenticated, "no CONNECT frame within "+s.srv.cfg.ConnectTimeout.String())
				s.waitClosed()
			case isTimeout(err):
				s.end(nil, "heart-beat timeout", true)
			default:
				s.end(nil, "client closed", false)
			}
			return
		}
		if s.isClosing() {
			_, _ = io.Copy(io.Discard, r)
			continue
		}
		if err := s.readMessage(r); err != nil {
			var fe *stomp.FrameError
			if errors.As(err, &fe) {
				s.fail(fe.Code, fe.Msg)
			} else if !errors.Is(err, errSessionClosing) {
				s.end(nil, "read: "+err.Error(), false)
			}
		}
	}
}

// flushBroker sends what the reader queued for the broker; it runs before
// the reader may block on the client socket (bufConn.beforeRead).
func (s *Session) flushBroker() {
	if s.link == nil || s.isClosing() {
		return
	}
	if err := s.link.Flush(); err != nil {
		s.brokerLost(err)
	}
}

// waitClosed lets the reader idle until the writer has closed the socket.
func (s *Session) waitClosed() {
	select {
	case <-s.writerDone:
	case <-time.After(3 * time.Second):
	}
}

// readMessage feeds one WebSocket message to the parser and handles every
// frame completed by it.
func (s *Session) readMessage(r io.Reader) error {
	for {
		n, err := r.Read(s.rbuf)
		if n > 0 {
			s.parser.Feed(s.rbuf[:n])
			for {
				f, perr := s.parser.Next()
				if perr != nil {
					return perr
				}
				if f == nil {
					break
				}
				if herr := s.handle(f); herr != nil {
					return herr
				}
			}
			s.parser.Compact()
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// handle processes one client frame. It returns errSessionClosing once the
// session has been ended.
func (s *Session) handle(f *frame.Frame) error {
	s.srv.metrics.frameIn(f.Command)
	s.srv.logFrame(s.log, "in", f)
	if !s.connected {
		if f.Command != frame.CONNECT && f.Command != frame.STOMP {
			s.fail(CodeBadFrame, "the first frame must be CONNECT or STOMP, not "+f.Command)
			return errSessionClosing
		}
		return s.connect(f)
	}
	if now := s.srv.now(); now.After(s.ident.Expiry) && !isRefresh(f) {
		return s.refuse(CodeTokenExpired, "token expired at "+s.ident.Expiry.UTC().Format(time.RFC3339)+"; SEND a fresh one to /edge/refresh")
	}
	switch f.Command {
	case frame.CONNECT, frame.STOMP:
		return s.refuse(CodeBadFrame, "already connected")
	case frame.SEND:
		return s.onSend(f)
	case frame.SUBSCRIBE:
		return s.onSubscribe(f)
	case frame.UNSUBSCRIBE:
		delete(s.subs, f.Header.Get(frame.Id))
	case frame.DISCONNECT:
		return s.onDisconnect(f)
	}
	return s.relay(f)
}

func (s *Session) refuse(code, msg string) error {
	s.fail(code, msg)
	return errSessionClosing
}

func (s *Session) relay(f *frame.Frame) error {
	if err := s.link.Write(f); err != nil {
		s.brokerLost(err)
		return errSessionClosing
	}
	return nil
}

func (s *Session) brokerLost(err error) {
	s.srv.brokerFailed(err)
	s.fail(CodeBrokerUnavailable, "lost the connection to the message broker")
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
		return s.refuse(CodeBadFrame, "supported STOMP versions are 1.0, 1.1 and 1.2")
	}
	s.version.Store(int32(v))
	s.parser.Version = v
	cx, cy, err := frame.ParseHeartBeat(orDefault(f.Header.Get(frame.HeartBeat), "0,0"))
	if err != nil {
		return s.refuse(CodeBadFrame, "invalid heart-beat header")
	}

	token := s.upgradeToken
	if token == "" {
		token, _ = auth.ConnectToken(f.Header)
	}
	ident, err := s.srv.verifier.Verify(token)
	if err != nil {
		return s.refuse(CodeUnauthenticated, authMessage(err))
	}
	perms, err := auth.NewPermissions(ident, s.srv.rules)
	if err != nil {
		return s.refuse(CodeUnauthenticated, "invalid token subject")
	}
	// Identity is published before the revocation check, so a revocation
	// landing in between is seen by one or the other.
	s.setIdentity(ident, perms)
	if revoked, reason := s.isRevoked(); revoked {
		return s.refuse(CodeRevoked, "access revoked: "+reason)
	}
	if !s.srv.acquireUser(ident.Subject) {
		return s.refuse(CodeTooManySessions, fmt.Sprintf("more than %d sessions for this user", s.srv.cfg.MaxSessionsPerUser))
	}
	s.userSlot = ident.Subject
	s.limiter = s.srv.rates.Session(ident.Subject)
	s.log = s.log.With("sub", ident.Subject)

	link, err := s.srv.dialer.Dial(s.ctx)
	if err != nil {
		s.srv.brokerFailed(err)
		s.log.Warn("broker dial failed", "err", err)
		return s.refuse(CodeBrokerUnavailable, "the message broker is unavailable; retry later")
	}
	s.link = link
	s.srv.metrics.BrokerConnections.Inc()
	go s.brokerLoop()

	hb := s.srv.cfg.Heartbeat
	var sendEvery, expectEvery time.Duration
	if hb > 0 && cy > 0 {
		sendEvery = max(hb, cy)
	}
	if hb > 0 && cx > 0 {
		expectEvery = max(hb, cx)
	}
	s.readLimit = expectEvery * 3 / 2
	if sendEvery > 0 {
		s.hbSet <- sendEvery
	}
	s.connected = true
	s.expiry = time.AfterFunc(time.Until(ident.Expiry)+s.srv.cfg.TokenExpiryGrace, s.expire)

	connected := frame.New(frame.CONNECTED,
		frame.HeartBeat, strconv.FormatInt(sendEvery.Milliseconds(), 10)+","+strconv.FormatInt(hb.Milliseconds(), 10),
		frame.Session, s.id,
		frame.Server, "stompgate/"+s.srv.version,
		"user-name", ident.Subject)
	if v != stomp.V10 {
		connected.Header.Set(frame.Version, v.String())
	}
	if hb == 0 || cx == 0 {
		connected.Header.Set(frame.HeartBeat, strconv.FormatInt(sendEvery.Milliseconds(), 10)+",0")
	}
	s.log.Debug("session connected", "version", v.String(), "heartbeat_out", sendEvery, "heartbeat_in", expectEvery)
	return s.send(connected)
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func authMessage(err error) string {
	switch {
	case errors.Is(err, auth.ErrNoToken):
		return "no token: send Authorization: Bearer <jwt> (upgrade or CONNECT), access_token, or passcode"
	case errors.Is(err, auth.ErrTokenExpired):
		return "token expired"
	}
	return "invalid token"
}

func (s *Session) setIdentity(id auth.Identity, perms *auth.Permissions) {
	s.ident, s.perms = id, perms
	s.closeAt.Store(id.Expiry.Add(s.srv.cfg.TokenExpiryGrace).UnixNano())
	s.mu.Lock()
	s.subject, s.tokenID = id.Subject, id.TokenID
	s.mu.Unlock()
}

// who returns the identity Server.Revoke matches against.
func (s *Session) who() (sub, jti string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.subject, s.tokenID
}

func (s *Session) isRevoked() (bool, string) {
	if s.srv.revoked == nil {
		return false, ""
	}
	return s.srv.revoked.IsRevoked(s.ident.Subject, s.ident.TokenID)
}

// expire runs on the expiry timer: it closes the session unless a refresh
// moved the deadline, in which case it waits for the new one.
func (s *Session) expire() {
	if left := time.Until(time.Unix(0, s.closeAt.Load())); left > 0 {
		s.expiry.Reset(left)
		return
	}
	s.fail(CodeTokenExpired, "token expired; SEND a fresh one to /edge/refresh before exp")
}

func isRefresh(f *frame.Frame) bool {
	return f.Command == frame.SEND && f.Header.Get(frame.Destination) == auth.EdgeRefresh
}

func (s *Session) destination(f *frame.Frame) (auth.Destination, error) {
	d, err := auth.ParseDestination(f.Header.Get(frame.Destination))
	if err != nil {
		return d, s.refuse(CodeForbidden, err.Error())
	}
	if d.Kind == auth.KindUser || d.Kind == auth.KindUserQueue {
		// SPEC §5 user destinations need the stompgate.user routing that a
		// later step adds; RabbitMQ would not know them.
		return d, s.refuse(CodeForbidden, "user destinations (/user/...) are not enabled on this edge yet")
	}
	return d, nil
}

// onSend re-checks every SEND in SPEC §3 order: expiry (handle), revocation,
// destination and permission, header firewall, size (the parser), rate.
func (s *Session) onSend(f *frame.Frame) error {
	if revoked, reason := s.isRevoked(); revoked {
		return s.refuse(CodeRevoked, "access revoked: "+reason)
	}
	d, err := s.destination(f)
	if err != nil {
		return err
	}
	if d.Kind == auth.KindEdgeRefresh {
		return s.refresh(f)
	}
	if !s.perms.CanDestination(auth.Send, d) {
		return s.refuse(CodeForbidden, "no send permission for "+d.Raw)
	}
	if err := auth.CheckHeaders(f.Header, d, s.perms); err != nil {
		return s.refuse(CodeForbidden, err.Error())
	}
	if err := s.rateLimit(); err != nil {
		return err
	}
	// Identity is stamped by the edge, never taken from the client.
	auth.StampIdentity(f.Header, s.ident.Subject)
	if d.Kind == auth.KindApp {
		// Journaled destination (SPEC §6): persisted before it is broadcast.
		f.Header.Set(frame.Destination, "/exchange/stompgate.ingest/"+strings.TrimPrefix(d.Raw, "/app/"))
	}
	return s.relay(f)
}

// rateLimit applies the session and per-user budgets: while over budget the
// reader stops reading this socket (backpressure); a wait longer than
// EDGE_RATE_MAX_WAIT closes the session with rate_limited.
func (s *Session) rateLimit() error {
	wait, ok := s.limiter.Reserve(s.srv.now(), s.srv.cfg.RateMaxWait)
	if !ok {
		return s.refuse(CodeRateLimited, "sending faster than the allowed rate")
	}
	if wait > 0 {
		if err := s.link.Flush(); err != nil {
			s.brokerLost(err)
			return errSessionClosing
		}
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-s.ctx.Done():
			return errSessionClosing
		}
	}
	return nil
}

// refresh replaces the session's token with the one in the body (same sub
// only). It is answered by the edge and never relayed.
func (s *Session) refresh(f *frame.Frame) error {
	ident, err := s.srv.verifier.Verify(strings.TrimSpace(string(f.Body)))
	if err != nil {
		return s.refuse(CodeUnauthenticated, "refresh: "+authMessage(err))
	}
	if ident.Subject != s.ident.Subject {
		return s.refuse(CodeForbidden, "refresh: the new token is for another subject")
	}
	perms, err := auth.NewPermissions(ident, s.srv.rules)
	if err != nil {
		return s.refuse(CodeUnauthenticated, "refresh: invalid token subject")
	}
	s.setIdentity(ident, perms)
	if revoked, reason := s.isRevoked(); revoked {
		return s.refuse(CodeRevoked, "access revoked: "+reason)
	}
	s.log.Debug("token refreshed", "exp", ident.Expiry)
	if r := f.Header.Get(frame.Receipt); r != "" {
		return s.send(frame.New(frame.RECEIPT, frame.ReceiptId, r))
	}
	return nil
}

func (s *Session) onSubscribe(f *frame.Frame) error {
	d, err := s.destination(f)
	if err != nil {
		return err
	}
	if d.Kind == auth.KindEdgeRefresh || !s.perms.CanDestination(auth.Subscribe, d) {
		return s.refuse(CodeForbidden, "no subscribe permission for "+d.Raw)
	}
	if err := auth.CheckHeaders(f.Header, d, s.perms); err != nil {
		return s.refuse(CodeForbidden, err.Error())
	}
	id := f.Header.Get(frame.Id)
	if id == "" {
		if stomp.Version(s.version.Load()) >= stomp.V11 {
			return s.refuse(CodeBadFrame, "SUBSCRIBE needs an id header")
		}
		id = d.Raw
	}
	if _, dup := s.subs[id]; !dup && len(s.subs) >= s.srv.cfg.MaxSubscriptions {
		return s.refuse(CodeTooManySubscriptions, fmt.Sprintf("at most %d subscriptions per session", s.srv.cfg.MaxSubscriptions))
	}
	s.subs[id] = struct{}{}
	return s.relay(f)
}

func (s *Session) onDisconnect(f *frame.Frame) error {
	receipt := f.Header.Get(frame.Receipt)
	if receipt == "" {
		s.end(nil, "client disconnect", false)
		return errSessionClosing
	}
	// The broker answers with the RECEIPT; brokerLoop forwards it and ends
	// the session. If the broker does not answer in time, the edge does.
	s.disconnectReceipt.Store(&receipt)
	if err := s.relay(f); err != nil {
		return err
	}
	time.AfterFunc(s.srv.cfg.BrokerTimeout, func() {
		_ = s.send(frame.New(frame.RECEIPT, frame.ReceiptId, receipt))
		s.end(nil, "client disconnect", false)
	})
	return nil
}

var errStopReading = errors.New("stop reading")

// brokerLoop forwards broker frames to the client until the link ends.
func (s *Session) brokerLoop() {
	defer close(s.brokerDone)
	err := s.link.ReadLoop(s.deliver, func(f *frame.Frame) error {
		received := time.Now()
		switch f.Command {
		case frame.MESSAGE:
			if err := s.enqueue(s.encode(f), frame.MESSAGE, received, false); err != nil {
				return err
			}
		case frame.RECEIPT:
			if err := s.enqueue(s.encode(f), frame.RECEIPT, received, false); err != nil {
				return err
			}
			s.signal()
			if r := s.disconnectReceipt.Load(); r != nil && *r == f.Header.Get(frame.ReceiptId) {
				s.end(nil, "client disconnect", false)
				return errStopReading
			}
		case frame.ERROR:
			e := frame.New(frame.ERROR, frame.Message, f.Header.Get(frame.Message), "x-error-code", CodeBroker)
			if ct := f.Header.Get(frame.ContentType); ct != "" {
				e.Header.Set(frame.ContentType, ct)
			}
			if rid := f.Header.Get(frame.ReceiptId); rid != "" {
				e.Header.Set(frame.ReceiptId, rid)
			}
			e.Body = append([]byte(nil), f.Body...)
			s.end(e, "broker error", false)
			return errStopReading
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStopReading) && !errors.Is(err, errSessionClosing) && !s.isClosing() {
		s.brokerLost(err)
	}
}

// encode re-encodes a broker frame for the client's STOMP version.
func (s *Session) encode(f *frame.Frame) []byte {
	s.srv.logFrame(s.log, "out", f)
	return stomp.AppendFrame(make([]byte, 0, 128+len(f.Body)+32*f.Header.Len()), f, stomp.Version(s.version.Load()))
}
