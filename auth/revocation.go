package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// RevocationChannel is the Postgres notification channel of revocation
// changes (SPEC §3). Writers notify it in the transaction of their change
// (Revoke and Unrevoke do); the payload is informational, listeners reload.
const RevocationChannel = "stompgate_revocations"

// Revocation is one row of stompgate_revocations.
type Revocation struct {
	ID        int64
	Subject   string    // "" when the row names a jti
	TokenID   string    // jti, "" when the row names a subject
	Until     time.Time // zero: until unrevoked
	Reason    string
	CreatedAt time.Time
}

// Active reports whether the revocation is in force at now.
func (r Revocation) Active(now time.Time) bool { return r.Until.IsZero() || now.Before(r.Until) }

// RevocationChange tells callbacks which revocations came into force with a
// reload: the relay closes the sessions of these subjects and tokens with
// ERROR revoked.
type RevocationChange struct {
	Subjects []string
	TokenIDs []string
}

// RevocationConfig tunes a RevocationStore. Zero values take the defaults.
type RevocationConfig struct {
	Logger *slog.Logger     // state changes; nil discards
	Now    func() time.Time // default time.Now
	// Resync is how often the whole table is reloaded even without a
	// notification: it catches rows written with triggers off (the table's
	// trigger notifies every other change, migration 00002) and
	// doubles as a liveness check of the listening connection. Default 30s.
	Resync time.Duration
	// MinBackoff and MaxBackoff bound the jittered exponential delay between
	// reconnection attempts while the database is unreachable. Defaults
	// 250ms and 15s.
	MinBackoff, MaxBackoff time.Duration
	// QueryTimeout bounds each statement (LISTEN, reload). Default 5s.
	QueryTimeout time.Duration
}

// RevocationStore holds the active rows of stompgate_revocations in memory
// and follows LISTEN stompgate_revocations. IsRevoked reads an immutable
// snapshot through an atomic pointer and never touches the database, so it
// is cheap enough for every SEND. While the database is unreachable the
// last known list stays in force, Healthy turns false and the store
// reconnects with backoff, reloading everything once it is back.
//
// The table must exist: call persist.Migrate first. Safe for concurrent
// use; Run is called once.
type RevocationStore struct {
	pool *pgxpool.Pool
	cfg  RevocationConfig
	log  *slog.Logger

	snap atomic.Pointer[revocationSnapshot]

	mu        sync.Mutex
	healthy   bool
	lastErr   error
	lastSync  time.Time
	callbacks map[int]func(RevocationChange)
	nextCB    int
	ready     chan struct{} // closed after the first successful load
	readyOnce sync.Once
}

type revocationSnapshot struct {
	subjects map[string]revEntry
	tokens   map[string]revEntry
}

type revEntry struct {
	until  time.Time // zero: forever
	reason string
}

// RevocationStatus is the store's state for /readyz detail and metrics.
type RevocationStatus struct {
	Healthy  bool      // listening and the last reload succeeded
	LastErr  error     // last failure, nil once healthy again
	LastSync time.Time // last successful reload
	Subjects int       // revoked subjects in the current list (active or with a future until)
	Tokens   int       // revoked jtis in the current list
}

// NewRevocationStore creates a store reading from pool. Nothing happens
// until Run.
func NewRevocationStore(pool *pgxpool.Pool, cfg RevocationConfig) *RevocationStore {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Resync <= 0 {
		cfg.Resync = 30 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 250 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(15*time.Second, cfg.MinBackoff)
	}
	if cfg.QueryTimeout <= 0 {
		cfg.QueryTimeout = 5 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &RevocationStore{pool: pool, cfg: cfg, log: log, callbacks: map[int]func(RevocationChange){}, ready: make(chan struct{})}
	s.snap.Store(&revocationSnapshot{})
	return s
}

// IsRevoked reports whether the subject or the token id is revoked now, and
// the operator's reason. Empty arguments never match.
func (s *RevocationStore) IsRevoked(sub, jti string) (bool, string) {
	snap := s.snap.Load()
	now := s.cfg.Now()
	if sub != "" {
		if e, ok := snap.subjects[sub]; ok && (e.until.IsZero() || now.Before(e.until)) {
			return true, e.reason
		}
	}
	if jti != "" {
		if e, ok := snap.tokens[jti]; ok && (e.until.IsZero() || now.Before(e.until)) {
			return true, e.reason
		}
	}
	return false, ""
}

// OnRevoke registers f, called after every reload that brought revocations
// into force, from the store's goroutine: f must not block (hand the work to
// the sessions). The returned func unregisters f.
func (s *RevocationStore) OnRevoke(f func(RevocationChange)) (unregister func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.nextCB
	s.nextCB++
	s.callbacks[id] = f
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.callbacks, id)
	}
}

// Healthy reports whether the store is listening and its list is current.
func (s *RevocationStore) Healthy() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.healthy
}

// Status returns the store's state.
func (s *RevocationStore) Status() RevocationStatus {
	snap := s.snap.Load()
	s.mu.Lock()
	defer s.mu.Unlock()
	return RevocationStatus{Healthy: s.healthy, LastErr: s.lastErr, LastSync: s.lastSync,
		Subjects: len(snap.subjects), Tokens: len(snap.tokens)}
}

// Ready is closed once the first load succeeded and its callbacks ran. An
// edge may wait on it (with a deadline) before accepting sessions.
func (s *RevocationStore) Ready() <-chan struct{} { return s.ready }

// Run loads the table, listens for changes and keeps the list current
// until ctx is done; it then returns nil. Database failures never end Run:
// it reports them through Status and reconnects with backoff.
func (s *RevocationStore) Run(ctx context.Context) error {
	backoff := s.cfg.MinBackoff
	for {
		start := time.Now()
		err := s.follow(ctx)
		if ctx.Err() != nil {
			return nil
		}
		s.setUnhealthy(err)
		if time.Since(start) > s.cfg.MaxBackoff {
			backoff = s.cfg.MinBackoff // it ran well for a while: a new outage
		}
		// Full jitter, so edges do not reconnect in lockstep.
		d := backoff/2 + rand.N(backoff/2+1)
		s.log.Warn("revocation list: database unreachable, keeping the last known list", "err", err, "retry_in", d)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
		backoff = min(2*backoff, s.cfg.MaxBackoff)
	}
}

// follow holds one dedicated connection: LISTEN first, then load (so no
// change between the two is missed), then reload on every notification and
// every Resync. It returns on the first error.
func (s *RevocationStore) follow(ctx context.Context) error {
	actx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
	pc, err := s.pool.Acquire(actx)
	cancel()
	if err != nil {
		return fmt.Errorf("acquire connection: %w", err)
	}
	// Out of the pool for good: a LISTENing session must not be reused.
	conn := pc.Hijack()
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn.Close(cctx)
	}()
	if err := s.exec(ctx, conn, "LISTEN "+RevocationChannel); err != nil {
		return err
	}
	if err := s.reload(ctx, conn); err != nil {
		return err
	}
	for {
		wctx, cancel := context.WithTimeout(ctx, s.cfg.Resync)
		_, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil && !errors.Is(err, context.DeadlineExceeded) && !pgconn.Timeout(err):
			return fmt.Errorf("wait for notification: %w", err)
		case err == nil:
			// Coalesce a burst: take what else is already queued.
			for {
				dctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
				_, err := conn.WaitForNotification(dctx)
				cancel()
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					if !errors.Is(err, context.DeadlineExceeded) && !pgconn.Timeout(err) {
						return fmt.Errorf("wait for notification: %w", err)
					}
					break
				}
			}
		}
		if err := s.reload(ctx, conn); err != nil {
			return err
		}
	}
}

func (s *RevocationStore) exec(ctx context.Context, conn *pgx.Conn, sql string) error {
	qctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
	defer cancel()
	if _, err := conn.Exec(qctx, sql); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

// reload replaces the snapshot with the rows in force now (or later: a
// future until is kept and compared at check time), then tells callbacks
// what came into force.
func (s *RevocationStore) reload(ctx context.Context, conn *pgx.Conn) error {
	qctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
	defer cancel()
	rows, err := conn.Query(qctx, `SELECT coalesce(subject, ''), coalesce(jti, ''), until, reason
		FROM stompgate_revocations WHERE until IS NULL OR until > now()`)
	if err != nil {
		return fmt.Errorf("load revocations: %w", err)
	}
	next := &revocationSnapshot{subjects: map[string]revEntry{}, tokens: map[string]revEntry{}}
	for rows.Next() {
		var sub, jti, reason string
		var until *time.Time
		if err := rows.Scan(&sub, &jti, &until, &reason); err != nil {
			rows.Close()
			return fmt.Errorf("load revocations: %w", err)
		}
		e := revEntry{reason: reason}
		if until != nil {
			e.until = *until
		}
		put(next.subjects, sub, e)
		put(next.tokens, jti, e)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("load revocations: %w", err)
	}
	prev := s.snap.Swap(next)

	now := s.cfg.Now()
	var ch RevocationChange
	for k, e := range next.subjects {
		if old, ok := prev.subjects[k]; e.active(now) && (!ok || !old.active(now)) {
			ch.Subjects = append(ch.Subjects, k)
		}
	}
	for k, e := range next.tokens {
		if old, ok := prev.tokens[k]; e.active(now) && (!ok || !old.active(now)) {
			ch.TokenIDs = append(ch.TokenIDs, k)
		}
	}
	s.mu.Lock()
	if !s.healthy {
		s.log.Info("revocation list: in sync", "subjects", len(next.subjects), "tokens", len(next.tokens))
	}
	s.healthy, s.lastErr, s.lastSync = true, nil, now
	cbs := make([]func(RevocationChange), 0, len(s.callbacks))
	for _, f := range s.callbacks {
		cbs = append(cbs, f)
	}
	s.mu.Unlock()
	if len(ch.Subjects)+len(ch.TokenIDs) > 0 {
		for _, f := range cbs {
			f(ch)
		}
	}
	s.readyOnce.Do(func() { close(s.ready) })
	return nil
}

// put records e under key, keeping the longer of two rows for one key.
func put(m map[string]revEntry, key string, e revEntry) {
	if key == "" {
		return
	}
	if old, ok := m[key]; ok {
		e = longer(old, e)
	}
	m[key] = e
}

func (e revEntry) active(now time.Time) bool { return e.until.IsZero() || now.Before(e.until) }

// longer keeps the revocation that lasts longer (no until beats any until).
func longer(a, b revEntry) revEntry {
	switch {
	case a.until.IsZero():
		return a
	case b.until.IsZero() || b.until.After(a.until):
		return b
	}
	return a
}

func (s *RevocationStore) setUnhealthy(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.healthy, s.lastErr = false, err
}

// Queryer is what the revocation writers need: *pgxpool.Pool, *pgx.Conn and
// pgx.Tx all fit.
type Queryer interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Revoke inserts a revocation of r.Subject or r.TokenID (exactly one) and
// notifies every edge in the same statement. It returns the row id.
func Revoke(ctx context.Context, db Queryer, r Revocation) (int64, error) {
	if (r.Subject == "") == (r.TokenID == "") {
		return 0, errors.New("revoke exactly one of a subject or a jti")
	}
	var until *time.Time
	if !r.Until.IsZero() {
		until = &r.Until
	}
	var id int64
	err := db.QueryRow(ctx, `WITH ins AS (
			INSERT INTO stompgate_revocations (subject, jti, until, reason)
			VALUES (nullif($1, ''), nullif($2, ''), $3, $4) RETURNING id)
		SELECT id FROM (SELECT id, pg_notify($5, 'revoke:' || id) FROM ins) notified`,
		r.Subject, r.TokenID, until, r.Reason, RevocationChannel).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("revoke: %w", err)
	}
	return id, nil
}

// Unrevoke deletes every revocation row of subject or jti (exactly one
// non-empty) and notifies every edge in the same statement. It returns how
// many rows went.
func Unrevoke(ctx context.Context, db Queryer, subject, jti string) (int64, error) {
	if (subject == "") == (jti == "") {
		return 0, errors.New("unrevoke exactly one of a subject or a jti")
	}
	var n int64
	// pg_notify is volatile: Postgres evaluates it for every deleted row
	// even though the outer query only counts them.
	err := db.QueryRow(ctx, `WITH del AS (
			DELETE FROM stompgate_revocations
			WHERE ($1 <> '' AND subject = $1) OR ($2 <> '' AND jti = $2) RETURNING id)
		SELECT count(*) FROM (SELECT pg_notify($3, 'unrevoke:' || id) FROM del) notified`,
		subject, jti, RevocationChannel).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("unrevoke: %w", err)
	}
	return n, nil
}

// ListRevocations returns every row, in force or not, oldest first.
func ListRevocations(ctx context.Context, db Queryer) ([]Revocation, error) {
	rows, err := db.Query(ctx, `SELECT id, coalesce(subject, ''), coalesce(jti, ''), until, reason, created_at
		FROM stompgate_revocations ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list revocations: %w", err)
	}
	defer rows.Close()
	var out []Revocation
	for rows.Next() {
		var r Revocation
		var until *time.Time
		if err := rows.Scan(&r.ID, &r.Subject, &r.TokenID, &until, &r.Reason, &r.CreatedAt); err != nil {
			return nil, fmt.Errorf("list revocations: %w", err)
		}
		if until != nil {
			r.Until = *until
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list revocations: %w", err)
	}
	return out, nil
}
