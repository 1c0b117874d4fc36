// Command stompload is a load generator for STOMP over WebSocket. It drives
// publisher/subscriber pairs against any /ws endpoint (the stompgate edge
// with JWTs it mints, or a broker's own Web-STOMP with login/passcode) and
// measures end-to-end latency: each message carries its send time, read by
// a subscriber in the same process on the same monotonic clock.
//
// Five modes:
//
//	closed  each pair keeps at most --inflight messages published but not
//	        yet received, refilling the window a quarter at a time in one
//	        write; measures the highest sustainable throughput.
//	rate    one pacer sends --rate messages/s in total over all pairs,
//	        whatever happens; latency is counted from each message's
//	        scheduled send time, so a stalled publisher shows up as latency
//	        (no coordinated omission).
//	idle    --conns sessions connect and subscribe, then send nothing for
//	        --duration; with --pids it reports how much each watched
//	        process (the edge, beam.smp) grew per session (VmRSS).
//	chat    --users in rooms of --users-per-room, each subscribed to its
//	        room and sending after exponential think times (--think):
//	        ramp, sustained and spike phases, reported each and overall
//	        (chat.go).
//	storm   --conns clients connect, then all reconnect at once when the
//	        server closes them or (--storm-drop) they drop at --at, with
//	        jittered backoff honouring 503 Retry-After; reports the
//	        reconnect-time distribution (storm.go).
//
// It is built to cost little per message, so that it measures the server
// (docs/BENCHMARKS.md, "stompload as an instrument"): writes are coalesced
// and flushed once per batch (package stomp/stompws), subscribers handle
// frames on their reading goroutine and wake a publisher once per read,
// not once per message, and the pacer sleeps in nanosleep(2) because Go's
// timers wake about 0.5 ms late on this machine.
//
// It prints a progress line every second, a human summary and, last, one
// line of JSON. It runs for --warmup + --duration plus a short drain and
// then stops by itself.
//
//	stompload --url ws://127.0.0.1:8080/ws --token-secret "$EDGE_JWT_HS256_SECRET"
//	stompload --url ws://127.0.0.1:15674/ws --login guest --passcode guest --mode rate --rate 1000
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "stompload:", err)
		os.Exit(1)
	}
}

// run parses args (args[0] is the program name), runs one load test and
// writes its report to stdout. It returns an error only when the test could
// not run (bad flags, a connection that could not be set up); errors during
// the run are counted and reported.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	cfg, err := parseConfig(args, getenv, stdout)
	if err != nil {
		return err
	}
	switch cfg.Mode {
	case ModeChat:
		res, err := runChat(ctx, cfg, stdout)
		if err != nil {
			return err
		}
		return res.write(stdout)
	case ModeStorm:
		res, err := runStorm(ctx, cfg, stdout)
		if err != nil {
			return err
		}
		return res.write(stdout)
	}
	if cfg.Mode == ModeIdle {
		res, err := runIdle(ctx, cfg, stdout)
		if err != nil {
			return err
		}
		return res.write(stdout)
	}
	res, err := newLoad(cfg, stdout).run(ctx)
	if err != nil {
		return err
	}
	return res.write(stdout)
}
