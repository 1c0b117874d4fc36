package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stompgate/stompgate/auth"
	"github.com/stompgate/stompgate/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const secret = "0123456789abcdef0123456789abcdef"

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func runCmd(t *testing.T, getenv func(string) string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := run(context.Background(), append([]string{"edgectl"}, args...), getenv, &out)
	return out.String(), err
}

func TestToken(t *testing.T) {
	getenv := env(map[string]string{"EDGE_JWT_HS256_SECRET": secret, "EDGE_JWT_ISSUER": "https://idp"})
	out, err := runCmd(t, getenv, "token", "--sub", "alice", "--scope", "subscribe:/topic/room.* send:/topic/room.*", "--jti", "t-1")
	if err != nil {
		t.Fatal(err)
	}
	v, err := auth.NewVerifier(auth.VerifierConfig{HS256Secret: []byte(secret), Issuer: "https://idp"}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	id, err := v.Verify(strings.TrimSpace(out))
	if err != nil {
		t.Fatal(err)
	}
	if id.Subject != "alice" || id.TokenID != "t-1" || len(id.Scopes) != 2 {
		t.Fatalf("%+v", id)
	}
	p, err := auth.NewPermissions(id, nil)
	if err != nil || !p.Can(auth.Subscribe, "/topic/room.1") || p.Can(auth.Subscribe, "/topic/#") {
		t.Fatalf("permissions %v", err)
	}
	if _, err := runCmd(t, getenv, "token"); err == nil {
		t.Fatal("token without --sub")
	}
	if _, err := runCmd(t, env(nil), "token", "--sub", "a"); err == nil {
		t.Fatal("token without a secret")
	}
}

func TestUsage(t *testing.T) {
	if _, err := runCmd(t, env(nil)); err == nil {
		t.Fatal("no command accepted")
	}
	if _, err := runCmd(t, env(nil), "frobnicate"); err == nil {
		t.Fatal("unknown command accepted")
	}
	out, err := runCmd(t, env(nil), "help")
	if err != nil || !strings.Contains(out, "revoke") {
		t.Fatalf("%q %v", out, err)
	}
}

func TestParseUntil(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"":                     {},
		"24h":                  now.Add(24 * time.Hour),
		"2026-03-02T00:00:00Z": time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC),
	} {
		got, err := parseUntil(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	for _, in := range []string{"-1h", "0s", "tomorrow", "2020-01-01T00:00:00Z"} {
		if _, err := parseUntil(in, now); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func TestRevokeCommands(t *testing.T) {
	getenv := env(map[string]string{"EDGE_DATABASE_URL": testenv.DB(t)})
	steps := []struct {
		args []string
		want string // substring of the output; "ERR" = must fail
	}{
		{[]string{"revocations"}, "ID"},
		{[]string{"revoke"}, "ERR"},
		{[]string{"revoke", "--subject", "a", "--jti", "b"}, "ERR"},
		{[]string{"revoke", "--subject", "alice", "--until", "yesterday"}, "ERR"},
		{[]string{"revoke", "--subject", "alice", "--reason", "laptop stolen"}, `revoked subject "alice" until unrevoked`},
		{[]string{"revoke", "--jti", "01TOKEN", "--until", "1h"}, `revoked token "01TOKEN" until 20`},
		{[]string{"revoke", "--subject", "with space"}, `"with space"`},
		{[]string{"revocations"}, "laptop stolen"},
		{[]string{"revocations"}, "01TOKEN"},
		{[]string{"revocations"}, `"with space"`},
		{[]string{"unrevoke", "--subject", "alice"}, "1 rows deleted"},
		{[]string{"unrevoke", "--jti", "01TOKEN"}, "1 rows deleted"},
		{[]string{"unrevoke", "--subject", "nobody"}, "0 rows deleted"},
		{[]string{"unrevoke"}, "ERR"},
	}
	for _, s := range steps {
		out, err := runCmd(t, getenv, s.args...)
		if s.want == "ERR" {
			if err == nil {
				t.Errorf("%v: accepted: %s", s.args, out)
			}
			continue
		}
		if err != nil || !strings.Contains(out, s.want) {
			t.Errorf("%v: %v\n%s", s.args, err, out)
		}
	}
	out, _ := runCmd(t, getenv, "revocations")
	if strings.Contains(out, "alice") || !strings.Contains(out, "with space") {
		t.Errorf("final list:\n%s", out)
	}
}

// Without a database URL the revocation commands say what to set, before
// any connection attempt.
func TestRevokeCommandsWithoutDatabase(t *testing.T) {
	for _, cmd := range []string{"revoke --subject a", "unrevoke --subject a", "revocations"} {
		if _, err := runCmd(t, env(nil), strings.Fields(cmd)...); err == nil || !strings.Contains(err.Error(), "EDGE_DATABASE_URL") {
			t.Errorf("%s without a database: %v", cmd, err)
		}
	}
}
