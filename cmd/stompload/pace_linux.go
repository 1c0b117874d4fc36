package main

import (
	"context"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// lockPacer gives the calling goroutine a thread of its own with a 1 ns
// timer slack (the default is 50 µs), for sleepUntil's nanosleep. The
// thread ends with the goroutine: it is never unlocked.
func lockPacer() {
	runtime.LockOSThread()
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
}

// sleepUntil returns at t, or when ctx ends. The Go runtime's timers wait
// in epoll with millisecond resolution and wake a sleeper 0.5 ms late on
// average on this kind of machine; at a steady rate that lateness would be
// counted as the server's latency. So the last few milliseconds are slept
// in nanosleep(2), which the kernel's high-resolution timers end on time.
func sleepUntil(ctx context.Context, t time.Time) {
	for ctx.Err() == nil {
		d := time.Until(t)
		if d <= 0 {
			return
		}
		if d > 5*time.Millisecond {
			timer := time.NewTimer(d - 3*time.Millisecond)
			select {
			case <-ctx.Done():
			case <-timer.C:
			}
			timer.Stop()
			continue
		}
		ts := unix.NsecToTimespec(d.Nanoseconds())
		_ = unix.Nanosleep(&ts, nil)
	}
}

// cpuSeconds is the user+system CPU time this process has used.
func cpuSeconds() float64 {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}
