package relay

import (
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/stompgate/stompgate/auth"
)

type fakeLimiter struct {
	wait  time.Duration
	ok    bool
	calls int
}

func (l *fakeLimiter) Reserve(time.Time, time.Duration) (time.Duration, bool) {
	l.calls++
	return l.wait, l.ok
}

func creds(t *testing.T, exp time.Time, scopes ...string) *Credentials {
	t.Helper()
	id := auth.Identity{Subject: "alice", TokenID: "jti-1", Expiry: exp, Scopes: scopes}
	p, err := auth.NewPermissions(id, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &Credentials{Ident: id, Perms: p}
}

// TestGuardSendOrder: each row breaks one or more checks; the refusal is
// the first broken check in SPEC §3's order (expiry, revocation,
// destination and permission, header firewall, rate), and the rate budget
// is only spent by a frame that passed everything else.
func TestGuardSendOrder(t *testing.T) {
	now := time.Now()
	valid, expired := now.Add(time.Hour), now.Add(-time.Second)
	revoked := func(sub, jti string) (bool, string) { return sub == "alice", "test" }
	tests := []struct {
		name      string
		exp       time.Time
		revoked   bool
		dest      string
		header    []string
		rateOK    bool
		want      CloseReason // 0: allowed
		rateSpent bool
	}{
		{"allowed", valid, false, "/topic/room.1", nil, true, 0, true},
		{"everything wrong: expiry first", expired, true, "/topic/secret", []string{"x-max-length", "1"}, false, ReasonTokenExpired, false},
		{"revoked before permission", valid, true, "/topic/secret", nil, false, ReasonRevoked, false},
		{"bad destination", valid, false, "/topic/a..b", nil, true, ReasonForbidden, false},
		{"unknown prefix", valid, false, "/elsewhere/x", nil, true, ReasonForbidden, false},
		{"no send permission before the firewall", valid, false, "/topic/secret", []string{"x-max-length", "1"}, false, ReasonForbidden, false},
		{"firewall before rate", valid, false, "/topic/room.1", []string{"x-dead-letter-exchange", "x"}, false, ReasonForbidden, false},
		{"reply-to without subscribe permission", valid, false, "/topic/room.1", []string{"reply-to", "/queue/someone-else"}, true, ReasonForbidden, false},
		{"rate last", valid, false, "/topic/room.1", nil, false, ReasonRateLimited, true},
		{"refresh passes an expired token", expired, false, auth.EdgeRefresh, nil, false, 0, false},
		{"refresh refused when revoked", expired, true, auth.EdgeRefresh, nil, true, ReasonRevoked, false},
		{"user destination with its grant", valid, false, "/user/bob/queue/in", nil, true, 0, true},
		{"another user's queue", valid, false, "/user/carol/queue/in", nil, true, ReasonForbidden, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := Guard{RateMaxWait: time.Second, MaxSubscriptions: 10}
			if tc.revoked {
				g.Revoked = revoked
			}
			c := creds(t, tc.exp, "send:/topic/room.*", "subscribe:/topic/room.*", "send:/user/bob/queue/in")
			f := frame.New(frame.SEND, append([]string{frame.Destination, tc.dest}, tc.header...)...)
			lim := &fakeLimiter{ok: tc.rateOK}
			_, _, r := g.Send(c, f, now, lim)
			switch {
			case tc.want == 0 && r != nil:
				t.Fatalf("refused %v, want allowed", r)
			case tc.want != 0 && (r == nil || r.Reason != tc.want):
				t.Fatalf("got %v, want %s", r, tc.want.Code())
			}
			if spent := lim.calls > 0; spent != tc.rateSpent {
				t.Fatalf("rate budget reserved = %v, want %v", spent, tc.rateSpent)
			}
		})
	}
}

func TestGuardSubscribe(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name     string
		exp      time.Time
		dest     string
		header   []string
		subs     int
		replaces bool
		want     CloseReason
	}{
		{"allowed", now.Add(time.Hour), "/topic/room.1", nil, 0, false, 0},
		{"expired", now.Add(-time.Second), "/topic/room.1", nil, 0, false, ReasonTokenExpired},
		{"wildcard within the grant", now.Add(time.Hour), "/topic/room.*", nil, 0, false, 0},
		{"wildcard wider than the grant", now.Add(time.Hour), "/topic/#", nil, 0, false, ReasonForbidden},
		{"refresh is not subscribable", now.Add(time.Hour), auth.EdgeRefresh, nil, 0, false, ReasonForbidden},
		{"declaring header", now.Add(time.Hour), "/topic/room.1", []string{"durable", "true"}, 0, false, ReasonForbidden},
		{"limit reached", now.Add(time.Hour), "/topic/room.1", nil, 10, false, ReasonTooManySubscriptions},
		{"limit reached, same id replaced", now.Add(time.Hour), "/topic/room.1", nil, 10, true, 0},
		{"permission before the limit", now.Add(time.Hour), "/topic/other", nil, 10, false, ReasonForbidden},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := Guard{MaxSubscriptions: 10}
			c := creds(t, tc.exp, "subscribe:/topic/room.*")
			f := frame.New(frame.SUBSCRIBE, append([]string{frame.Id, "1", frame.Destination, tc.dest}, tc.header...)...)
			_, r := g.Subscribe(c, f, now, tc.subs, tc.replaces)
			switch {
			case tc.want == 0 && r != nil:
				t.Fatalf("refused %v, want allowed", r)
			case tc.want != 0 && (r == nil || r.Reason != tc.want):
				t.Fatalf("got %v, want %s", r, tc.want.Code())
			}
		})
	}
}

func TestGuardExpiryAllowsOnlyRefresh(t *testing.T) {
	g := Guard{}
	c := creds(t, time.Now().Add(-time.Minute))
	for _, cmd := range []string{frame.SUBSCRIBE, frame.UNSUBSCRIBE, frame.ACK, frame.NACK, frame.BEGIN, frame.COMMIT, frame.ABORT, frame.DISCONNECT} {
		if r := g.Expiry(c, frame.New(cmd), time.Now()); r == nil || r.Reason != ReasonTokenExpired {
			t.Errorf("%s with an expired token: %v", cmd, r)
		}
	}
	if r := g.Expiry(c, frame.New(frame.SEND, frame.Destination, auth.EdgeRefresh), time.Now()); r != nil {
		t.Errorf("refresh refused: %v", r)
	}
}

// TestCloseReasons: every reason maps to its code, label and close code in
// one place, and every x-error-code of SPEC §4 has a reason.
func TestCloseReasons(t *testing.T) {
	codes := map[string]bool{}
	for _, r := range allReasons() {
		if r.String() == "" || r.String() == "other" && r.Code() != "" {
			t.Errorf("reason %d has no label", r)
		}
		if c := r.Code(); c != "" {
			codes[c] = true
			if reasonForCode(c) != r {
				t.Errorf("reasonForCode(%q) = %v, want %v", c, reasonForCode(c), r)
			}
			if r.WSCode() == 1000 {
				t.Errorf("%s closes with 1000 Normal Closure", c)
			}
		}
	}
	for _, c := range AllCodes {
		if !codes[c] {
			t.Errorf("x-error-code %q has no CloseReason", c)
		}
	}
	if ReasonShuttingDown.WSCode() != 1001 || ReasonClientDisconnect.WSCode() != 1000 || ReasonSendTimeout.String() != CodeSlowConsumer {
		t.Error("close code mapping changed")
	}
}
