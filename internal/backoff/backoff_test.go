package backoff

import (
	"context"
	"testing"
	"time"
)

func TestDelaysDoubleWithinJitterAndCap(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: 800 * time.Millisecond}
	steps := []time.Duration{100, 200, 400, 800, 800, 800}
	for round := 0; round < 50; round++ {
		b.Reset()
		for i, step := range steps {
			step *= time.Millisecond
			d := b.Next()
			if d < step/2 || d > step {
				t.Fatalf("round %d step %d: delay %s outside [%s, %s]", round, i, d, step/2, step)
			}
		}
	}
}

func TestJitterSpreadsDelays(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 100 {
		b := Backoff{Min: time.Second, Max: time.Second}
		seen[b.Next()] = true
	}
	if len(seen) < 50 {
		t.Fatalf("only %d distinct delays in 100 draws: no jitter", len(seen))
	}
}

func TestSleepStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b := Backoff{Min: time.Hour, Max: time.Hour}
	if b.Sleep(ctx) {
		t.Fatal("Sleep reported a full delay after the context was cancelled")
	}
}
