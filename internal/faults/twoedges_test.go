package faults

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/revocation"
)

// Scenario 7: two edge processes on one broker vhost and one database,
// both on shared links (the default). A topic published on A reaches the
// subscribers on A and on B exactly once each, in order (each edge has its
// own shared queue bound to amq.topic); a revocation reaches the sessions
// on both edges within 2 s (SPEC §3) and keeps the subject out of both.
// relay's TestAttackRevokedMidSessionOnTwoEdges covers the same with
// in-process edges on dedicated STOMP connections.
func TestTwoEdgesOneBroker(t *testing.T) {
	testenv.Integration(t)
	t.Parallel()
	const n = 200
	vhost, dbURL := testenv.Vhost(t), testenv.DB(t)
	env := map[string]string{"EDGE_DATABASE_URL": dbURL}
	a := startEdgeProc(t, "edge-a", vhost, env)
	b := startEdgeProc(t, "edge-b", vhost, env)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	subA := mustDial(t, ctx, a.url, testenv.Token(t, "eve", nil))
	subB := mustDial(t, ctx, b.url, testenv.Token(t, "eve", nil))
	for _, c := range []*client{subA, subB} {
		if err := c.subscribe("s", "/topic/room.two"); err != nil {
			t.Fatal(err)
		}
	}
	pub := mustDial(t, ctx, a.url, testenv.Token(t, "alice", nil))
	for i := range n {
		if err := pub.sendBody(frame.SEND, []byte(strconv.Itoa(i)), frame.Destination, "/topic/room.two"); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.send(frame.SEND, frame.Destination, "/topic/room.two", frame.Receipt, "last"); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.await(10*time.Second, receiptFor("last"), nil); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*client{"A": subA, "B": subB} {
		for i := range n {
			f, err := c.await(10*time.Second, func(f *frame.Frame) bool { return true }, nil)
			if err != nil {
				t.Fatalf("subscriber on %s after %d messages: %v", name, i, err)
			}
			if f.Command != frame.MESSAGE || string(f.Body) != strconv.Itoa(i) {
				t.Fatalf("subscriber on %s: message %d is %s %q", name, i, f.Command, f.Body)
			}
		}
		if f, _ := c.await(10*time.Second, func(f *frame.Frame) bool { return true }, nil); f == nil || len(f.Body) != 0 {
			t.Fatalf("subscriber on %s: after %d messages got %v, want the empty last one", name, n, f)
		}
	}
	t.Logf("%d messages published on A: %d received on A, %d on B, in order", n+1, n+1, n+1)

	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	start := time.Now()
	if _, err := revocation.Revoke(ctx, pool, revocation.Row{Subject: "eve", Reason: "faults test"}); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*client{"A": subA, "B": subB} {
		f, err := c.await(2*time.Second, func(f *frame.Frame) bool { return f.Command == frame.ERROR }, nil)
		if err != nil || errorCode(f) != "revoked" {
			t.Fatalf("session on %s: %v %v, want ERROR revoked within 2s of the revocation", name, f, err)
		}
		t.Logf("session on %s revoked after %s", name, time.Since(start).Round(time.Millisecond))
	}
	for name, e := range map[string]*edgeProc{"A": a, "B": b} {
		_, err := dial(ctx, e.url, testenv.Token(t, "eve", nil), dialOpts{})
		if de, ok := err.(*dialErr); !ok || de.code != "revoked" {
			t.Errorf("a new session of eve on %s: %v, want ERROR revoked", name, err)
		}
	}
	if err := pub.send(frame.SEND, frame.Destination, "/topic/room.two", frame.Receipt, "after"); err != nil {
		t.Fatal(err)
	}
	if f, err := pub.await(5*time.Second, receiptFor("after"), nil); err != nil || f.Command != frame.RECEIPT {
		t.Fatalf("alice after eve's revocation: %v %v", f, err)
	}
}

// mustDial dials or fails t; the session is closed when t ends.
func mustDial(t *testing.T, ctx context.Context, url, token string) *client {
	t.Helper()
	c, err := dial(ctx, url, token, dialOpts{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close)
	return c
}
