package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stompgate/stompgate/internal/sched"
	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/persist"
)

func TestRunRefusesBadSettings(t *testing.T) {
	env := map[string]string{"EDGE_JWT_HS256_SECRET": testenv.Secret, "EDGE_ALLOWED_ORIGINS": "*", "EDGE_DRAIN_PERIOD": "soon"}
	err := run(context.Background(), nil, func(k string) string { return env[k] }, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "EDGE_ALLOWED_ORIGINS") || !strings.Contains(err.Error(), "EDGE_DRAIN_PERIOD") {
		t.Fatalf("error %v should name both bad variables", err)
	}
}

func TestRunServesAndDrains(t *testing.T) {
	vhost, dbURL := testenv.Vhost(t), testenv.DB(t)
	env := map[string]string{
		"EDGE_JWT_HS256_SECRET": testenv.Secret, "EDGE_LISTEN": "127.0.0.1:0",
		"EDGE_BROKER_LOGIN": "guest", "EDGE_BROKER_PASSCODE": "guest", "EDGE_BROKER_VHOST": vhost,
		"EDGE_DATABASE_URL": dbURL, "EDGE_DRAIN_DELAY": "0s", "EDGE_DRAIN_PERIOD": "0s",
	}
	// The persister owns stompgate_messages; history reads it.
	mctx, mcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer mcancel()
	if err := persist.Migrate(mctx, testenv.Pool(t, dbURL)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := &testenv.SyncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, func(k string) string { return env[k] }, out) }()
	var addr string
	testenv.WaitFor(t, 20*time.Second, func() error {
		m := regexp.MustCompile(`listening on (\S+)`).FindStringSubmatch(out.String())
		if m == nil {
			return fmt.Errorf("not listening yet: %s", out.String())
		}
		addr = m[1]
		return nil
	})
	// EDGE_SCHED_POLICY defaults to batch: every thread of the process,
	// including those the HTTP server started, runs under SCHED_BATCH.
	t.Cleanup(func() { _ = sched.Apply(sched.Other) })
	tids, err := sched.Threads(0)
	if err != nil {
		t.Fatal(err)
	}
	for _, tid := range tids {
		if p, err := sched.Of(tid); err == nil && p != sched.Batch {
			t.Errorf("thread %d runs under %s, want batch", tid, p)
		}
	}
	for path, want := range map[string]string{"/healthz": "ok", "/sockjs/info": `"websocket":true`, "/readyz": `"revocations":"ok"`, "/metrics": "stompgate_sessions_active", "/": "<title>stompgate chat"} {
		testenv.WaitFor(t, 10*time.Second, func() error {
			resp, err := http.Get("http://" + addr + path)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			var b bytes.Buffer
			_, _ = b.ReadFrom(resp.Body)
			if resp.StatusCode != 200 || !strings.Contains(b.String(), want) {
				return fmt.Errorf("%s: %d %q", path, resp.StatusCode, b.String())
			}
			return nil
		})
	}
	history := "http://" + addr + "/api/history?destination=/topic/room.1&after_seq=0"
	for token, want := range map[string]int{"": http.StatusUnauthorized, testenv.Token(t, "alice", nil): http.StatusOK} {
		req, _ := http.NewRequest("GET", history, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || (want == 200 && !strings.Contains(b.String(), `"messages"`)) {
			t.Errorf("/api/history with token=%v: %d %s, want %d", token != "", resp.StatusCode, b.String(), want)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not return after cancel")
	}
}

// startRun runs the edge's run() with env until the test ends (then it
// cancels and waits for run to return without error) and returns the
// address it listens on.
func startRun(t *testing.T, env map[string]string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &testenv.SyncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, func(k string) string { return env[k] }, out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("run did not return after cancel")
		}
	})
	var addr string
	testenv.WaitFor(t, 20*time.Second, func() error {
		m := regexp.MustCompile(`listening on (\S+)`).FindStringSubmatch(out.String())
		if m == nil {
			return fmt.Errorf("not listening yet: %s", out.String())
		}
		addr = m[1]
		return nil
	})
	return addr
}
