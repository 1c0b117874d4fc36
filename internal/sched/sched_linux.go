package sched

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Apply moves every thread of this process to policy p. Threads the Go
// runtime starts later are cloned from existing ones and inherit it; a thread
// cloned while Apply walks the list is caught by the next pass.
func Apply(p Policy) error {
	want, err := linuxPolicy(p)
	if err != nil {
		return err
	}
	for range 5 {
		changed, err := applyOnce(want)
		if err != nil {
			return err
		}
		if changed == 0 {
			return nil
		}
	}
	return nil
}

// Of reports the policy of thread tid (0: the calling thread); tid may be a
// thread of another process.
func Of(tid int) (Policy, error) {
	attr, err := unix.SchedGetAttr(tid, 0)
	if err != nil {
		return "", fmt.Errorf("sched_getattr %d: %w", tid, err)
	}
	switch attr.Policy {
	case unix.SCHED_NORMAL:
		return Other, nil
	case unix.SCHED_BATCH:
		return Batch, nil
	}
	return Policy(strconv.FormatUint(uint64(attr.Policy), 10)), nil
}

// Threads lists the thread IDs of process pid (0: this process).
func Threads(pid int) ([]int, error) {
	dir := "/proc/self/task"
	if pid != 0 {
		dir = "/proc/" + strconv.Itoa(pid) + "/task"
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	tids := make([]int, 0, len(entries))
	for _, e := range entries {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

func linuxPolicy(p Policy) (uint32, error) {
	switch p {
	case Other:
		return unix.SCHED_NORMAL, nil
	case Batch:
		return unix.SCHED_BATCH, nil
	}
	return 0, fmt.Errorf("unknown scheduling policy %q (want %q or %q)", p, Other, Batch)
}

// applyOnce sets want on every thread that does not have it yet and says
// how many it changed.
func applyOnce(want uint32) (int, error) {
	tids, err := Threads(0)
	if err != nil {
		return 0, err
	}
	changed := 0
	for _, tid := range tids {
		attr, err := unix.SchedGetAttr(tid, 0)
		if errors.Is(err, unix.ESRCH) {
			continue // the thread exited meanwhile
		}
		if err != nil {
			return changed, fmt.Errorf("sched_getattr %d: %w", tid, err)
		}
		if attr.Policy == want {
			continue
		}
		attr.Policy = want
		attr.Priority = 0
		if err := unix.SchedSetAttr(tid, attr, 0); err != nil && !errors.Is(err, unix.ESRCH) {
			return changed, fmt.Errorf("sched_setattr %d: %w", tid, err)
		}
		changed++
	}
	return changed, nil
}
