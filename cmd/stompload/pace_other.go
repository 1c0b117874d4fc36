//go:build !linux

package main

import (
	"context"
	"time"
)

func lockPacer() {}

// sleepUntil returns at t, or when ctx ends, as precisely as the runtime's
// timers allow.
func sleepUntil(ctx context.Context, t time.Time) {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
	case <-timer.C:
	}
}

// cpuSeconds is not measured off Linux.
func cpuSeconds() float64 { return 0 }
