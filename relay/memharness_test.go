package relay

import (
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stompgate/stompgate/relay/broker/memory"
)

// startMemEdge starts an edge whose broker side is the in-memory broker:
// for session tests that need no RabbitMQ (make test-unit).
func startMemEdge(t *testing.T, env map[string]string, deps func(*Deps)) (*edge, *memory.Broker) {
	t.Helper()
	mb := memory.New(0)
	e := startEdgeWith(t, "memory", env, func(d *Deps) {
		d.Broker = mb
		if deps != nil {
			deps(d)
		}
	})
	return e, mb
}

// readyz is the edge's /readyz status (0 when it cannot be reached).
func (e *edge) readyz() int {
	resp, err := http.Get(e.http.URL + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// fakeClock is a Clock that moves only when told; timers fire (in the
// caller's goroutine, outside the lock) when Advance passes their time.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c    *fakeClock
	at   time.Time
	f    func()
	live bool
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), f: f, live: true}
	c.timers = append(c.timers, t)
	return t
}

// Advance moves the clock by d and runs every timer that came due, in
// time order.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []*fakeTimer
	for _, t := range c.timers {
		if t.live && !t.at.After(c.now) {
			t.live = false
			due = append(due, t)
		}
	}
	c.mu.Unlock()
	sort.Slice(due, func(i, j int) bool { return due[i].at.Before(due[j].at) })
	for _, t := range due {
		t.f()
	}
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.live
	t.live = false
	return was
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.live
	t.at, t.live = t.c.now.Add(d), true
	return was
}
