// Package revocation is the list of revoked subjects and tokens (SPEC §3)
// and everything around its table, stompgate_revocations:
//
//   - Migrate: the table and its notify trigger, embedded goose migrations
//     with their own version table;
//   - Revoke, Unrevoke, List: the admin statements edgectl runs;
//   - Store: the list in memory, following LISTEN stompgate_revocations,
//     answering IsRevoked for every SEND and pushing each revocation that
//     comes into force to a Revoker (the relay server, which closes those
//     sessions with ERROR revoked).
package revocation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stompgate/stompgate/internal/backoff"
)

// Channel is the Postgres notification channel of revocation changes (SPEC
// §3). The table's trigger notifies it for every statement that changes the
// table, and Revoke and Unrevoke in their own statement as well; the
// payload is informational, listeners reload.
const Channel = "stompgate_revocations"

// Revoker is told which revocations came into force with a reload, so that
// it closes the sessions of these subjects and token ids. *relay.Server is
// one. Revoke is called from the store's goroutine and must not block.
type Revoker interface {
	Revoke(subjects, tokenIDs []string)
}

// RevokerFunc adapts a function to a Revoker.
type RevokerFunc func(subjects, tokenIDs []string)

// Revoke calls f.
func (f RevokerFunc) Revoke(subjects, tokenIDs []string) { f(subjects, tokenIDs) }

// Config tunes a Store. Zero values take the defaults.
type Config struct {
	Logger *slog.Logger     // state changes; nil discards
	Now    func() time.Time // default time.Now
	// Resync is how often the whole table is reloaded even without a
	// notification: it catches rows written with triggers off (the table's
	// trigger notifies every other change, revocation/migrations) and
	// doubles as a liveness check of the listening connection. Default 30s.
	Resync time.Duration
	// MinBackoff and MaxBackoff bound the jittered exponential delay
	// (internal/backoff) between reconnection attempts while the database
	// is unreachable. Defaults 250ms and 15s.
	MinBackoff, MaxBackoff time.Duration
	// QueryTimeout bounds each statement (LISTEN, reload). Default 5s.
	QueryTimeout time.Duration
}

// Store holds the active rows of stompgate_revocations in memory
// and follows LISTEN stompgate_revocations. IsRevoked reads an immutable
// snapshot through an atomic pointer and never touches the database, so it
// is cheap enough for every SEND. While the database is unreachable the
// last known list stays in force, Healthy turns false and the store
// reconnects with backoff, reloading everything once it is back.
//
// The table must exist: call Migrate first. Safe for concurrent use; Run
// is called once.
type Store struct {
	pool *pgxpool.Pool
	cfg  Config
	log  *slog.Logger

	snap atomic.Pointer[snapshot]

	mu        sync.Mutex
	healthy   bool
	lastErr   error
	lastSync  time.Time
	revokers  map[int]Revoker
	nextID    int
	ready     chan struct{} // closed after the first successful load
	readyOnce sync.Once
}

type snapshot struct {
	subjects map[string]revEntry
	tokens   map[string]revEntry
}

type revEntry struct {
	until  time.Time // zero: forever
	reason string
}

// Status is the store's state for /readyz detail and metrics.
type Status struct {
	Healthy  bool      // listening and the last reload succeeded
	LastErr  error     // last failure, nil once healthy again
	LastSync time.Time // last successful reload
	Subjects int       // revoked subjects in the current list (active or with a future until)
	Tokens   int       // revoked jtis in the current list
}

// NewStore creates a store reading from pool. Nothing happens until Run.
func NewStore(pool *pgxpool.Pool, cfg Config) *Store {
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
	s := &Store{pool: pool, cfg: cfg, log: log, revokers: map[int]Revoker{}, ready: make(chan struct{})}
	s.snap.Store(&snapshot{})
	return s
}

// IsRevoked reports whether the subject or the token id is revoked now, and
// the operator's reason. Empty arguments never match.
func (s *Store) IsRevoked(sub, jti string) (bool, string) {
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

// OnRevoke registers r: after every reload that brought revocations into
// force (a new row, an until that moved to the future, everything in force
// at the first load and after a reconnect), the store calls r.Revoke with
// those subjects and token ids, from its goroutine. This is the one path
// from a row in stompgate_revocations to closed sessions: the edge passes
// its relay server. The returned func unregisters r.
func (s *Store) OnRevoke(r Revoker) (unregister func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.nextID
	s.nextID++
	s.revokers[id] = r
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.revokers, id)
	}
}

// Healthy reports whether the store is listening and its list is current.
func (s *Store) Healthy() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.healthy
}

// Status returns the store's state.
func (s *Store) Status() Status {
	snap := s.snap.Load()
	s.mu.Lock()
	defer s.mu.Unlock()
	return Status{Healthy: s.healthy, LastErr: s.lastErr, LastSync: s.lastSync,
		Subjects: len(snap.subjects), Tokens: len(snap.tokens)}
}

// Ready is closed once the first load succeeded and its revokers ran. An
// edge may wait on it (with a deadline) before accepting sessions.
func (s *Store) Ready() <-chan struct{} { return s.ready }

// Run loads the table, listens for changes and keeps the list current
// until ctx is done; it then returns nil. Database failures never end Run:
// it reports them through Status and reconnects with backoff.
func (s *Store) Run(ctx context.Context) error {
	retry := backoff.Backoff{Min: s.cfg.MinBackoff, Max: s.cfg.MaxBackoff}
	for {
		start := time.Now()
		err := s.follow(ctx)
		if ctx.Err() != nil {
			return nil
		}
		s.setUnhealthy(err)
		if time.Since(start) > s.cfg.MaxBackoff {
			retry.Reset() // it ran well for a while: a new outage
		}
		d := retry.Next()
		s.log.Warn("revocation list: database unreachable, keeping the last known list", "err", err, "retry_in", d)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// follow holds one dedicated connection: LISTEN first, then load (so no
// change between the two is missed), then reload on every notification and
// every Resync. It returns on the first error.
func (s *Store) follow(ctx context.Context) error {
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
	if err := s.exec(ctx, conn, "LISTEN "+Channel); err != nil {
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

func (s *Store) exec(ctx context.Context, conn *pgx.Conn, sql string) error {
	qctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
	defer cancel()
	if _, err := conn.Exec(qctx, sql); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

// reload replaces the snapshot with the rows in force now (or later: a
// future until is kept and compared at check time), then tells the
// revokers what came into force.
func (s *Store) reload(ctx context.Context, conn *pgx.Conn) error {
	qctx, cancel := context.WithTimeout(ctx, s.cfg.QueryTimeout)
	defer cancel()
	rows, err := conn.Query(qctx, `SELECT coalesce(subject, ''), coalesce(jti, ''), until, reason
		FROM stompgate_revocations WHERE until IS NULL OR until > now()`)
	if err != nil {
		return fmt.Errorf("load revocations: %w", err)
	}
	next := &snapshot{subjects: map[string]revEntry{}, tokens: map[string]revEntry{}}
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
	subjects, tokenIDs := cameIntoForce(prev.subjects, next.subjects, now), cameIntoForce(prev.tokens, next.tokens, now)
	s.mu.Lock()
	if !s.healthy {
		s.log.Info("revocation list: in sync", "subjects", len(next.subjects), "tokens", len(next.tokens))
	}
	s.healthy, s.lastErr, s.lastSync = true, nil, now
	revokers := make([]Revoker, 0, len(s.revokers))
	for _, r := range s.revokers {
		revokers = append(revokers, r)
	}
	s.mu.Unlock()
	if len(subjects)+len(tokenIDs) > 0 {
		for _, r := range revokers {
			r.Revoke(subjects, tokenIDs)
		}
	}
	s.readyOnce.Do(func() { close(s.ready) })
	return nil
}

// cameIntoForce returns the keys of next that are in force at now and were
// not in prev.
func cameIntoForce(prev, next map[string]revEntry, now time.Time) []string {
	var keys []string
	for k, e := range next {
		if old, ok := prev[k]; e.active(now) && (!ok || !old.active(now)) {
			keys = append(keys, k)
		}
	}
	return keys
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

func (s *Store) setUnhealthy(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.healthy, s.lastErr = false, err
}
