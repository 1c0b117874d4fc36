package relay

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/time/rate"

	"github.com/stompgate/stompgate/auth"
	"github.com/stompgate/stompgate/config"
	"github.com/stompgate/stompgate/relay/broker"
	"github.com/stompgate/stompgate/stomp"
)

// Subprotocols are the STOMP WebSocket subprotocols, in the edge's order of
// preference.
var Subprotocols = []string{"v12.stomp", "v11.stomp", "v10.stomp"}

// Deps are what a Server needs from its environment.
type Deps struct {
	Config   config.Edge
	Verifier *auth.Verifier
	Origins  *auth.OriginPolicy
	// Broker is the broker side of every session (package broker):
	// stompconn in production, memory in tests.
	Broker  broker.Broker
	Metrics *Metrics
	Logger  *slog.Logger
	Clock   Clock  // nil: SystemClock
	Version string // reported in CONNECTED's server header

	// Rules are the EDGE_ACL_FILE defaults for every user (nil: none).
	Rules *auth.Rules
	// Revocations answers whether a subject or token is revoked; nil when
	// the edge runs without a database (revocation off).
	Revocations Revocations
	// Journal replays journaled streams for x-resume-after; nil without a
	// database (the header is then refused).
	Journal Journal
}

// Revocations is the part of revocation.Store the relay uses.
type Revocations interface {
	IsRevoked(sub, jti string) (bool, string)
	Healthy() bool
}

// Server accepts WebSocket upgrades on /ws and runs sessions. It is safe for
// concurrent use; Drain ends it.
//
// Lock order: Server.mu, then userSlots.mu; a session's Outbox.mu is never
// held while taking either.
type Server struct {
	cfg      config.Edge
	env      *sessionEnv
	origins  *auth.OriginPolicy
	broker   broker.Broker
	metrics  *Metrics
	log      *slog.Logger
	revoked  Revocations
	upgrader websocket.Upgrader
	accept   *rate.Limiter // nil = unlimited

	baseCtx context.Context
	cancel  context.CancelFunc

	active   atomic.Int64 // sessions admitted and not yet ended
	draining atomic.Bool
	brokerUp atomic.Bool
	probe    chan struct{} // capacity 1: a pending request for a broker probe

	mu       sync.Mutex // guards sessions and the WaitGroup's registration against Drain
	sessions map[*Session]struct{}
	wg       sync.WaitGroup
}

// userSlots counts each subject's open sessions (EDGE_MAX_SESSIONS_PER_USER).
type userSlots struct {
	max int
	mu  sync.Mutex
	n   map[string]int
}

func (u *userSlots) acquire(sub string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.n[sub] >= u.max {
		return false
	}
	u.n[sub]++
	return true
}

func (u *userSlots) release(sub string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.n[sub]--; u.n[sub] <= 0 {
		delete(u.n, sub)
	}
}

// NewServer builds a Server. Sessions live under a context derived from
// base, not from any request.
func NewServer(base context.Context, d Deps) *Server {
	ctx, cancel := context.WithCancel(base)
	clock := d.Clock
	if clock == nil {
		clock = SystemClock{}
	}
	s := &Server{
		cfg:      d.Config,
		origins:  d.Origins,
		broker:   d.Broker,
		metrics:  d.Metrics,
		log:      d.Logger,
		revoked:  d.Revocations,
		baseCtx:  ctx,
		cancel:   cancel,
		probe:    make(chan struct{}, 1),
		sessions: map[*Session]struct{}{},
	}
	s.env = &sessionEnv{
		cfg: &s.cfg,
		limits: stomp.Limits{
			MaxFrameBytes:  d.Config.MaxFrameBytes,
			MaxHeaders:     d.Config.MaxHeaders,
			MaxHeaderBytes: d.Config.MaxHeaderBytes,
		},
		guard:    Guard{RateMaxWait: d.Config.RateMaxWait, MaxSubscriptions: d.Config.MaxSubscriptions},
		verifier: d.Verifier,
		rules:    d.Rules,
		broker:   d.Broker,
		journal:  d.Journal,
		rates: auth.NewRateLimits(d.Config.RateSession.PerSecond, d.Config.RateSession.Burst,
			d.Config.RateUser.PerSecond, d.Config.RateUser.Burst),
		users:        &userSlots{max: d.Config.MaxSessionsPerUser, n: map[string]int{}},
		metrics:      d.Metrics,
		clock:        clock,
		trace:        frameTrace{enabled: d.Config.LogFrames},
		version:      d.Version,
		brokerFailed: s.brokerFailed,
	}
	if d.Revocations != nil {
		s.env.guard.Revoked = d.Revocations.IsRevoked
	}
	s.upgrader = websocket.Upgrader{
		Subprotocols:     Subprotocols,
		HandshakeTimeout: 10 * time.Second,
		// An idle session should cost little (issue 12: ≤ 20 KB in the
		// edge). Reads: a small buffer of the session's own (it must not
		// be 0, or gorilla would read through net/http's buffer and
		// bypass bufConn.beforeRead); message payloads are read into a
		// pooled buffer. Writes: frames go straight into bufConn, and
		// gorilla takes a write buffer from the pool only for the rare
		// message it writes itself.
		ReadBufferSize:  4 << 10,
		WriteBufferPool: &sync.Pool{},
		// The Origin policy runs before Upgrade is called; gorilla's own
		// same-origin check would refuse legitimate cross-origin apps.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	if !d.Config.AcceptRate.Unlimited() {
		s.accept = rate.NewLimiter(rate.Limit(d.Config.AcceptRate.PerSecond), d.Config.AcceptRate.Burst)
	}
	s.brokerUp.Store(true)
	return s
}

// Handler returns the edge's HTTP routes other than the demo page.
func (s *Server) Routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /ws", s.serveWS)
	// Per method: "GET /" (the demo page) would conflict with "/sockjs/".
	sj := s.sockJS()
	for _, m := range []string{"GET", "POST", "OPTIONS"} {
		mux.Handle(m+" /sockjs/", sj)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", s.serveReady)
}

// ReadyDetail is the /readyz body.
type ReadyDetail struct {
	Ready    bool   `json:"ready"`
	Broker   string `json:"broker"`
	Draining bool   `json:"draining"`
	Sessions int64  `json:"sessions"`
	// Revocations is "off" without EDGE_DATABASE_URL, "ok", or "stale" when
	// the database is unreachable and the last known list is in force (the
	// edge stays ready: refusing everyone would be worse).
	Revocations string `json:"revocations"`
}

func (s *Server) serveReady(w http.ResponseWriter, _ *http.Request) {
	d := ReadyDetail{Broker: "up", Draining: s.draining.Load(), Sessions: s.active.Load()}
	if !s.brokerUp.Load() {
		d.Broker = "down"
	}
	switch {
	case s.revoked == nil:
		d.Revocations = "off"
	case s.revoked.Healthy():
		d.Revocations = "ok"
	default:
		d.Revocations = "stale"
	}
	d.Ready = d.Broker == "up" && !d.Draining
	w.Header().Set("Content-Type", "application/json")
	if !d.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(d)
}

func (s *Server) refuse(w http.ResponseWriter, status int, reason, msg string) {
	s.metrics.HTTPRefused.WithLabelValues(reason).Inc()
	if status == http.StatusServiceUnavailable {
		// Jittered so that refused clients do not all come back at once.
		w.Header().Set("Retry-After", strconv.Itoa(1+rand.IntN(10)))
	}
	http.Error(w, msg, status)
}

// admit counts a new connection in (s.active) or says why not: draining,
// EDGE_MAX_CONNECTIONS, EDGE_ACCEPT_RATE.
func (s *Server) admit() (reason, msg string) {
	if s.draining.Load() {
		return "draining", "shutting down"
	}
	if s.active.Add(1) > int64(s.cfg.MaxConnections) {
		s.active.Add(-1)
		return "max_connections", "too many connections"
	}
	if s.accept != nil && !s.accept.Allow() {
		s.active.Add(-1)
		return "accept_rate", "too many new connections"
	}
	return "", ""
}

// checkOrigin applies the Origin policy to a request that may open a
// session and returns its upgrade token; ok is false after it refused
// with 403.
func (s *Server) checkOrigin(w http.ResponseWriter, r *http.Request) (token string, ok bool) {
	decision := s.origins.Check(r.Header.Get("Origin"))
	if decision == auth.OriginRefused {
		s.refuse(w, http.StatusForbidden, "origin", "origin not allowed")
		return "", false
	}
	token, source := auth.UpgradeToken(r, s.cfg.TokenCookie)
	if source == auth.SourceCookie && decision != auth.OriginAllowed {
		// A cookie rides along with any request the browser makes; without
		// an allowed Origin it could be a cross-site attack.
		s.refuse(w, http.StatusForbidden, "origin", "cookie authentication needs an allowed Origin")
		return "", false
	}
	return token, true
}

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	token, ok := s.checkOrigin(w, r)
	if !ok {
		return
	}
	if reason, msg := s.admit(); reason != "" {
		s.refuse(w, http.StatusServiceUnavailable, reason, msg)
		return
	}
	var bc *bufConn
	ws, err := s.upgrader.Upgrade(hijackWrapper{ResponseWriter: w, wrap: func(c net.Conn) net.Conn {
		bc = &bufConn{Conn: c}
		return bc
	}}, r, nil)
	if err != nil {
		s.active.Add(-1)
		s.metrics.HTTPRefused.WithLabelValues("handshake").Inc()
		return // Upgrade has replied with an HTTP error
	}
	if err := bc.flush(time.Now().Add(s.cfg.SendTimeLimit)); err != nil {
		s.active.Add(-1)
		bc.Close()
		return
	}
	sess := newWSSession(s.env, s.baseCtx, ws, bc, token, s.log)
	s.run(sess, func() {
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "shutting down"), time.Now().Add(time.Second))
		_ = bc.flush(time.Now().Add(time.Second))
		bc.Close()
	})
}

// run registers an admitted session (s.active already counts it) and
// serves it to its end; refuse closes its connection when a drain started
// first. Registration and the draining check share the lock with
// Drain/Close, so no session is added to the WaitGroup after they started
// waiting.
func (s *Server) run(sess *Session, refuse func()) {
	s.mu.Lock()
	if s.draining.Load() {
		s.mu.Unlock()
		s.active.Add(-1)
		refuse()
		return
	}
	s.sessions[sess] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	s.metrics.SessionsActive.Inc()
	s.metrics.SessionsTotal.Inc()
	defer func() {
		s.mu.Lock()
		delete(s.sessions, sess)
		s.mu.Unlock()
		s.metrics.SessionsActive.Dec()
		s.active.Add(-1)
		s.wg.Done()
	}()
	sess.serve()
}

// brokerFailed marks the broker unreachable until the prober sees it again.
func (s *Server) brokerFailed(err error) {
	if s.brokerUp.Swap(false) {
		s.log.Warn("broker unreachable", "err", err)
		s.metrics.BrokerUp.Set(0)
	}
	select {
	case s.probe <- struct{}{}:
	default:
	}
}

// ProbeBroker checks the broker every interval (and at once after a session
// saw it fail) with Broker.Probe, until ctx ends.
func (s *Server) ProbeBroker(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, s.cfg.BrokerTimeout)
		err := s.broker.Probe(pctx)
		cancel()
		if err == nil {
			if !s.brokerUp.Swap(true) {
				s.log.Info("broker reachable again")
			}
			s.metrics.BrokerUp.Set(1)
		} else if ctx.Err() == nil {
			s.brokerFailed(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.probe:
			// Rate-limit probes triggered by failing sessions.
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
}

// Drain stops admitting sessions at once (/readyz turns 503), waits
// DrainDelay, then closes open sessions spread evenly over DrainPeriod, each
// with ERROR shutting_down, and returns when all have ended or ctx is done.
func (s *Server) Drain(ctx context.Context) error {
	s.mu.Lock()
	s.draining.Store(true)
	s.mu.Unlock()
	s.log.Info("draining", "sessions", s.active.Load(), "delay", s.cfg.DrainDelay, "period", s.cfg.DrainPeriod)
	select {
	case <-ctx.Done():
	case <-time.After(s.cfg.DrainDelay):
	}
	s.mu.Lock()
	open := make([]*Session, 0, len(s.sessions))
	for sess := range s.sessions {
		open = append(open, sess)
	}
	s.mu.Unlock()
	var gap time.Duration
	if len(open) > 1 {
		gap = s.cfg.DrainPeriod / time.Duration(len(open))
	}
	// Each close has its slot on the clock (start + i×gap): sleeping gap
	// after each close instead let the time closes take add up, and 2,000
	// sessions drained over 10s took 13.3s (internal/faults TestDeployDrain).
	start := time.Now()
	for i, sess := range open {
		if wait := time.Until(start.Add(time.Duration(i) * gap)); wait > 0 && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
		}
		sess.close(ReasonShuttingDown, "server shutting down; reconnect")
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.cancel()
		return errors.New("drain: sessions still open when the deadline passed")
	}
}

// Close ends every session at once (tests, and after Drain).
func (s *Server) Close() {
	s.mu.Lock()
	s.draining.Store(true)
	for sess := range s.sessions {
		sess.close(ReasonShuttingDown, "server shutting down; reconnect")
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.cancel()
}

// Revoke closes, with ERROR revoked, every session of the given subjects or
// token ids. The revocation store calls it when a revocation comes into force.
func (s *Server) Revoke(subjects, tokenIDs []string) {
	if len(subjects) == 0 && len(tokenIDs) == 0 {
		return
	}
	subs := make(map[string]bool, len(subjects))
	for _, v := range subjects {
		subs[v] = true
	}
	jtis := make(map[string]bool, len(tokenIDs))
	for _, v := range tokenIDs {
		jtis[v] = true
	}
	s.mu.Lock()
	var hit []*Session
	for sess := range s.sessions {
		sub, jti := sess.who()
		if (sub != "" && subs[sub]) || (jti != "" && jtis[jti]) {
			hit = append(hit, sess)
		}
	}
	s.mu.Unlock()
	for _, sess := range hit {
		sess.close(ReasonRevoked, "access revoked by an operator")
	}
}
