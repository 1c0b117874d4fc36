// Package sched sets the Linux CPU scheduling policy of the whole process.
//
// The edge and the persister are relays: each message costs them a few
// system calls and a wake-up, and nothing useful. Under the default policy
// (SCHED_OTHER) every arriving frame wakes a thread that preempts whatever
// runs, so on a busy machine each message crosses every process alone. Under
// SCHED_BATCH a woken thread does not preempt a running one: it waits for a
// free CPU or the end of the running task's slice, and by then several frames
// are waiting, so one read, one write and one wake-up carry many messages —
// for the edge, for RabbitMQ and for the clients. When a CPU is idle a woken
// thread still runs at once, so an unsaturated machine sees no added latency.
// docs/BENCHMARKS.md has the measurements.
package sched

import "log/slog"

// Policy names a scheduling policy as the configuration spells it.
type Policy string

// The policies a process may choose for itself without privileges.
const (
	Other Policy = "other" // SCHED_OTHER, the kernel's default
	Batch Policy = "batch" // SCHED_BATCH: no wake-up preemption
)

// Use applies policy, named by the setting it came from (e.g.
// EDGE_SCHED_POLICY), and logs a warning when the kernel refuses: a relay is
// correct under any policy, only busier, so refusal is not fatal.
func Use(setting, policy string, log *slog.Logger) {
	if err := Apply(Policy(policy)); err != nil {
		log.Warn(setting+" not applied; running under the kernel's default", "policy", policy, "err", err)
	}
}
