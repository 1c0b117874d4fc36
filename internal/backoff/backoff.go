// Package backoff is the one retry delay of stompgate: capped exponential
// backoff with jitter, used wherever a process reconnects to the broker or
// the database, so that many edges or persisters never retry in lockstep.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff yields delays that double from Min up to Max, each drawn at
// random from [d/2, d] ("equal jitter": never less than half the step, so
// a retry storm still thins out). The zero value is not usable; set Min
// and Max. A Backoff belongs to one goroutine.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Next returns the next delay and advances the step.
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = b.Min
	} else {
		b.cur = min(2*b.cur, b.Max)
	}
	if b.cur <= 0 {
		return 0
	}
	half := b.cur / 2
	return half + rand.N(b.cur-half+1)
}

// Reset starts again from Min (after a success).
func (b *Backoff) Reset() { b.cur = 0 }

// Sleep waits the next delay, or until ctx is done; it reports whether the
// full delay passed.
func (b *Backoff) Sleep(ctx context.Context) bool {
	t := time.NewTimer(b.Next())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
