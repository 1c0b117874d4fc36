package auth

import (
	"sync"
	"testing"
	"time"
)

func TestSessionLimiterBurstAndRate(t *testing.T) {
	r := NewRateLimits(10, 20, 0, 0) // 10/s, burst 20, no per-user limit
	l := r.Session("alice")
	defer l.Close()
	now := time.Unix(1000, 0)
	for i := range 20 {
		if w, ok := l.Reserve(now, 2*time.Second); !ok || w != 0 {
			t.Fatalf("burst message %d: wait %s ok %v", i, w, ok)
		}
	}
	// The 21st waits 100ms (one token at 10/s), the 22nd 200ms.
	if w, ok := l.Reserve(now, 2*time.Second); !ok || w != 100*time.Millisecond {
		t.Fatalf("wait %s ok %v", w, ok)
	}
	if w, ok := l.Reserve(now, 2*time.Second); !ok || w != 200*time.Millisecond {
		t.Fatalf("wait %s ok %v", w, ok)
	}
	// Over maxWait: refused, and nothing taken.
	if w, ok := l.Reserve(now, 250*time.Millisecond); ok || w != 300*time.Millisecond {
		t.Fatalf("wait %s ok %v", w, ok)
	}
	if w, ok := l.Reserve(now, 2*time.Second); !ok || w != 300*time.Millisecond {
		t.Fatalf("refused reservation was not cancelled: wait %s ok %v", w, ok)
	}
	// A second later 10 tokens came back, 3 of them already promised.
	now = now.Add(time.Second)
	for i := range 7 {
		if w, ok := l.Reserve(now, 0); !ok || w != 0 {
			t.Fatalf("refill %d: wait %s ok %v", i, w, ok)
		}
	}
	if _, ok := l.Reserve(now, 0); ok {
		t.Fatal("maxWait 0 allowed a wait")
	}
}

func TestUserLimiterShared(t *testing.T) {
	r := NewRateLimits(0, 0, 1, 2) // per user: 1/s, burst 2
	a, b := r.Session("alice"), r.Session("alice")
	c := r.Session("bob")
	now := time.Unix(1000, 0)
	if _, ok := a.Reserve(now, 0); !ok {
		t.Fatal("a")
	}
	if _, ok := b.Reserve(now, 0); !ok {
		t.Fatal("b")
	}
	// alice's bucket is empty whichever tab sends; bob's is untouched.
	if w, ok := a.Reserve(now, 0); ok || w != time.Second {
		t.Fatalf("a again: %s %v", w, ok)
	}
	if w, ok := b.Reserve(now, 5*time.Second); !ok || w != time.Second {
		t.Fatalf("b waits: %s %v", w, ok)
	}
	if _, ok := c.Reserve(now, 0); !ok {
		t.Fatal("bob limited by alice")
	}
	if r.Subjects() != 2 {
		t.Fatalf("%d subjects", r.Subjects())
	}
	a.Close()
	a.Close() // idempotent
	if r.Subjects() != 2 {
		t.Fatal("freed while b is open")
	}
	b.Close()
	c.Close()
	if r.Subjects() != 0 {
		t.Fatalf("%d subjects left", r.Subjects())
	}
}

func TestLimiterBothBuckets(t *testing.T) {
	r := NewRateLimits(100, 1, 1, 1) // session 100/s burst 1; user 1/s burst 1
	l := r.Session("alice")
	defer l.Close()
	now := time.Unix(1000, 0)
	if _, ok := l.Reserve(now, 0); !ok {
		t.Fatal("first")
	}
	// The user bucket decides: 1s, though the session one would allow 10ms.
	if w, ok := l.Reserve(now, 500*time.Millisecond); ok || w != time.Second {
		t.Fatalf("%s %v", w, ok)
	}
	// The refusal gave the session bucket its token back too.
	now = now.Add(time.Second)
	if w, ok := l.Reserve(now, 0); !ok || w != 0 {
		t.Fatalf("%s %v", w, ok)
	}
}

func TestLimiterUnlimited(t *testing.T) {
	r := NewRateLimits(0, 0, 0, 0)
	l := r.Session("alice")
	defer l.Close()
	now := time.Unix(1000, 0)
	for range 10000 {
		if w, ok := l.Reserve(now, 0); !ok || w != 0 {
			t.Fatal("limited")
		}
	}
	if r.Subjects() != 0 {
		t.Fatal("unlimited users tracked")
	}
	// A burst below 1 counts as 1.
	r = NewRateLimits(0.5, 0, 0, 0)
	l2 := r.Session("alice")
	defer l2.Close()
	if _, ok := l2.Reserve(now, 0); !ok {
		t.Fatal("burst 0")
	}
}

func TestLimiterConcurrent(t *testing.T) {
	r := NewRateLimits(1000, 2000, 1000, 2000)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for range 200 {
				l := r.Session([]string{"a", "b"}[i%2])
				l.Reserve(time.Now(), time.Second)
				l.Close()
			}
		})
	}
	wg.Wait()
	if r.Subjects() != 0 {
		t.Fatalf("%d subjects left", r.Subjects())
	}
}
