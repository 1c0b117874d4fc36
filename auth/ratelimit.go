package auth

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// RateLimits holds the token buckets of every session on this edge: one per
// session and one per subject, shared by all that subject's sessions (all
// tabs of one user). Safe for concurrent use.
type RateLimits struct {
	session, user bucketSpec

	mu    sync.Mutex
	users map[string]*userBucket
}

type bucketSpec struct {
	limit rate.Limit
	burst int
}

func newSpec(perSecond float64, burst int) bucketSpec {
	if perSecond <= 0 || math.IsInf(perSecond, 1) || math.IsNaN(perSecond) {
		return bucketSpec{limit: rate.Inf}
	}
	return bucketSpec{limit: rate.Limit(perSecond), burst: max(burst, 1)}
}

func (s bucketSpec) unlimited() bool { return s.limit == rate.Inf }

type userBucket struct {
	lim  *rate.Limiter
	refs int
}

// NewRateLimits takes the EDGE_RATE_SESSION and EDGE_RATE_USER rates as
// messages per second and burst (config.Rate's two fields); a rate ≤ 0 is
// unlimited, a burst below 1 counts as 1.
func NewRateLimits(sessionPerSecond float64, sessionBurst int, userPerSecond float64, userBurst int) *RateLimits {
	return &RateLimits{
		session: newSpec(sessionPerSecond, sessionBurst),
		user:    newSpec(userPerSecond, userBurst),
		users:   map[string]*userBucket{},
	}
}

// Session returns the limiter of a new session of sub. The caller must
// Close it when the session ends, which frees the subject's bucket when it
// was the last session. Its buckets start full.
func (r *RateLimits) Session(sub string) *SessionLimiter {
	l := &SessionLimiter{reg: r, sub: sub}
	if !r.session.unlimited() {
		l.session = rate.NewLimiter(r.session.limit, r.session.burst)
	}
	if !r.user.unlimited() {
		r.mu.Lock()
		u := r.users[sub]
		if u == nil {
			u = &userBucket{lim: rate.NewLimiter(r.user.limit, r.user.burst)}
			r.users[sub] = u
		}
		u.refs++
		r.mu.Unlock()
		l.user = u.lim
	}
	return l
}

// Subjects is the number of subjects with a shared bucket (for tests and a
// gauge).
func (r *RateLimits) Subjects() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.users)
}

func (r *RateLimits) release(sub string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if u := r.users[sub]; u != nil {
		if u.refs--; u.refs <= 0 {
			delete(r.users, sub)
		}
	}
}

// SessionLimiter is one session's view: its own bucket and its subject's
// shared one. Reserve is meant for the session's reader goroutine; Close
// may be called from anywhere, more than once.
type SessionLimiter struct {
	reg     *RateLimits
	sub     string
	session *rate.Limiter // nil = unlimited
	user    *rate.Limiter // nil = unlimited
	once    sync.Once
}

// Reserve takes one message from both buckets at now and returns how long
// the caller must wait before relaying it. The relay stops reading the
// socket for that long (backpressure). When the wait would exceed maxWait
// (EDGE_RATE_MAX_WAIT), nothing is taken (both reservations are cancelled)
// and ok is false: the relay closes the session with rate_limited.
func (l *SessionLimiter) Reserve(now time.Time, maxWait time.Duration) (wait time.Duration, ok bool) {
	var rs [2]*rate.Reservation
	for i, lim := range [2]*rate.Limiter{l.session, l.user} {
		if lim == nil {
			continue
		}
		r := lim.ReserveN(now, 1)
		rs[i] = r
		if !r.OK() {
			cancelAll(rs[:], now)
			return 0, false
		}
		wait = max(wait, r.DelayFrom(now))
	}
	if wait > maxWait {
		cancelAll(rs[:], now)
		return wait, false
	}
	return wait, true
}

func cancelAll(rs []*rate.Reservation, now time.Time) {
	for _, r := range rs {
		if r != nil {
			r.CancelAt(now)
		}
	}
}

// Close releases the session's share of its subject's bucket.
func (l *SessionLimiter) Close() {
	l.once.Do(func() {
		if l.user != nil {
			l.reg.release(l.sub)
		}
	})
}
