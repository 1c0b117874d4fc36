//go:build linux

package sched_test

import (
	"runtime"
	"sync"
	"testing"

	"github.com/stompgate/stompgate/internal/sched"
)

// policies reports each thread's policy.
func policies(t *testing.T) map[int]sched.Policy {
	t.Helper()
	tids, err := sched.Threads(0)
	if err != nil {
		t.Fatal(err)
	}
	got := map[int]sched.Policy{}
	for _, tid := range tids {
		p, err := sched.Of(tid)
		if err != nil {
			continue // exited
		}
		got[tid] = p
	}
	return got
}

// startThreads forces the runtime to start n more OS threads and keeps them
// until release is closed.
func startThreads(n int, release chan struct{}) *sync.WaitGroup {
	var started, done sync.WaitGroup
	started.Add(n)
	done.Add(n)
	for range n {
		go func() {
			defer done.Done()
			runtime.LockOSThread() // this goroutine's thread is now its own
			started.Done()
			<-release
		}()
	}
	started.Wait()
	return &done
}

// TestApplyCoversEveryThreadAndLaterOnes checks the whole process moves to
// SCHED_BATCH — the threads that exist and the ones started afterwards —
// and back.
func TestApplyCoversEveryThreadAndLaterOnes(t *testing.T) {
	release := make(chan struct{})
	before := startThreads(4, release)
	if err := sched.Apply(sched.Batch); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sched.Apply(sched.Other); err != nil {
			t.Error(err)
		}
	})
	after := startThreads(4, release)
	got := policies(t)
	if len(got) < 9 {
		t.Fatalf("only %d threads seen", len(got))
	}
	for tid, p := range got {
		if p != sched.Batch {
			t.Errorf("thread %d: policy %s, want batch", tid, p)
		}
	}
	close(release)
	before.Wait()
	after.Wait()

	if err := sched.Apply(sched.Other); err != nil {
		t.Fatal(err)
	}
	for tid, p := range policies(t) {
		if p != sched.Other {
			t.Errorf("after Apply(Other): thread %d: policy %s", tid, p)
		}
	}
}

func TestApplyRefusesUnknownPolicy(t *testing.T) {
	if err := sched.Apply("fifo"); err == nil {
		t.Fatal("Apply(fifo) succeeded")
	}
}
