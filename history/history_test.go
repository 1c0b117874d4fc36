package history_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stompgate/stompgate/auth"
	"github.com/stompgate/stompgate/history"
	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/persist"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestIsText(t *testing.T) {
	for ct, want := range map[string]bool{
		"text/plain": true, "text/plain;charset=utf-8": true, "application/json": true,
		"application/vnd.api+json": true, "application/xml": true, "image/svg+xml": true,
		"application/octet-stream": false, "image/png": false, "": false, "garbage;;": false,
	} {
		if got := history.IsText(ct); got != want {
			t.Errorf("IsText(%q) = %v", ct, got)
		}
	}
}

type fixture struct {
	srv    *httptest.Server
	stream string
}

// newFixture stores 5 journaled messages on stream s (seq 1..5: text,
// text, binary, JSON, text) and 3 archived ones on /topic/archived.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	pool := testenv.Pool(t, testenv.DB(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := persist.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`SELECT stompgate_publish('room.1', 'hello', 'text/plain', '{"a":"b"}', 'alice')`,
		`SELECT stompgate_publish('room.1', 'héllo')`,
		`SELECT stompgate_publish('room.1', '\xff00'::bytea, 'application/octet-stream')`,
		`SELECT stompgate_publish('room.1', '{"x":1}', 'application/json')`,
		`SELECT stompgate_publish('room.1', 'five', 'text/plain')`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		if _, err := pool.Exec(ctx, `INSERT INTO stompgate_messages (message_id, sender, exchange, routing_key, content_type, body, published_at)
			VALUES ($1, 'amqp:x', 'amq.topic', 'archived', 'text/plain', $2, now())`, fmt.Sprint("a", i), []byte(fmt.Sprint("arch ", i))); err != nil {
			t.Fatal(err)
		}
	}
	v, err := auth.NewVerifier(auth.VerifierConfig{HS256Secret: []byte(testenv.Secret)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	rules, err := auth.ParseRules(strings.NewReader("subscribe:/topic/ruled.{sub}\n"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(history.NewHandler(pool, v, rules, history.Config{
		Revoked: func(id auth.Identity) bool { return id.Subject == "mallory" },
	}))
	t.Cleanup(srv.Close)
	return &fixture{srv: srv}
}

type msg struct {
	ID           int64           `json:"id"`
	Seq          *int64          `json:"seq"`
	MessageID    string          `json:"message_id"`
	Sender       string          `json:"sender"`
	ContentType  *string         `json:"content_type"`
	Headers      map[string]any  `json:"headers"`
	Body         string          `json:"body"`
	BodyEncoding string          `json:"body_encoding"`
	PublishedAt  time.Time       `json:"published_at"`
	Raw          json.RawMessage `json:"-"`
}

func (f *fixture) get(t *testing.T, token, query string) (int, []msg, map[string]string) {
	t.Helper()
	req, _ := http.NewRequest("GET", f.srv.URL+"/api/history?"+query, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("content type %q", ct)
	}
	if resp.StatusCode != 200 {
		var e map[string]string
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, nil, e
	}
	var out struct {
		Messages []msg `json:"messages"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	if out.Messages == nil {
		t.Fatal(`"messages" is not an array`)
	}
	return 200, out.Messages, nil
}

func seqs(ms []msg) []int64 {
	var out []int64
	for _, m := range ms {
		if m.Seq == nil {
			out = append(out, -m.ID)
			continue
		}
		out = append(out, *m.Seq)
	}
	return out
}

func TestHistoryHandler(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	tok := testenv.Token(t, "alice", nil)
	q := func(dest string, kv ...string) string {
		v := url.Values{"destination": {dest}}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Add(kv[i], kv[i+1])
		}
		return v.Encode()
	}

	// By seq: order, limit, bodies and headers.
	code, ms, _ := f.get(t, tok, q("/topic/room.1", "after_seq", "0"))
	if code != 200 || fmt.Sprint(seqs(ms)) != "[1 2 3 4 5]" {
		t.Fatalf("%d %v", code, seqs(ms))
	}
	if ms[0].Body != "hello" || ms[0].Sender != "alice" || ms[0].Headers["a"] != "b" || *ms[0].ContentType != "text/plain" ||
		ms[0].BodyEncoding != "" || !strings.HasPrefix(ms[0].MessageID, "pg:") || ms[0].PublishedAt.IsZero() {
		t.Fatalf("message 1: %+v", ms[0])
	}
	if ms[1].Body != "héllo" || ms[1].Sender != "pg:postgres" {
		t.Fatalf("message 2: %+v", ms[1])
	}
	if b, _ := base64.StdEncoding.DecodeString(ms[2].Body); ms[2].BodyEncoding != "base64" || string(b) != "\xff\x00" {
		t.Fatalf("message 3: %+v", ms[2])
	}
	if ms[3].Body != `{"x":1}` {
		t.Fatalf("message 4: %+v", ms[3])
	}
	if _, ms, _ = f.get(t, tok, q("/topic/room.1", "after_seq", "2", "limit", "2")); fmt.Sprint(seqs(ms)) != "[3 4]" {
		t.Fatalf("after_seq=2 limit=2: %v", seqs(ms))
	}
	if _, ms, _ = f.get(t, tok, q("/topic/room.1", "after_seq", "5")); len(ms) != 0 {
		t.Fatalf("after the end: %v", seqs(ms))
	}
	// /exchange/amq.topic/<key> is the same destination.
	if _, ms, _ = f.get(t, tok, q("/exchange/amq.topic/room.1", "after_seq", "4")); fmt.Sprint(seqs(ms)) != "[5]" {
		t.Fatalf("exchange form: %v", seqs(ms))
	}

	// By id: newest, after_id, before_id; journal rows are found too.
	_, arch, _ := f.get(t, tok, q("/topic/archived"))
	if len(arch) != 3 || arch[0].Seq != nil || arch[0].Body != "arch 0" || arch[2].Body != "arch 2" {
		t.Fatalf("archived: %+v", arch)
	}
	if _, ms, _ = f.get(t, tok, q("/topic/archived", "after_id", fmt.Sprint(arch[0].ID))); len(ms) != 2 || ms[0].ID != arch[1].ID {
		t.Fatalf("after_id: %+v", ms)
	}
	if _, ms, _ = f.get(t, tok, q("/topic/archived", "before_id", fmt.Sprint(arch[2].ID), "limit", "1")); len(ms) != 1 || ms[0].ID != arch[1].ID {
		t.Fatalf("before_id: %+v", ms)
	}
	if _, ms, _ = f.get(t, tok, q("/topic/room.1", "limit", "2")); fmt.Sprint(seqs(ms)) != "[4 5]" {
		t.Fatalf("newest of a journaled stream: %v", seqs(ms))
	}

	// Permissions from the rules file: {sub} is the caller's subject.
	noScope := testenv.Token(t, "alice", map[string]any{"scope": "subscribe:/topic/other"})
	if code, _, _ := f.get(t, noScope, q("/topic/ruled.alice", "after_seq", "0")); code != 200 {
		t.Fatalf("rule grant: %d", code)
	}

	for _, c := range []struct {
		name, token, query string
		code               int
		errCode, text      string
	}{
		{"no token", "", q("/topic/room.1"), 401, "unauthenticated", "Bearer"},
		{"bad token", "not-a-jwt", q("/topic/room.1"), 401, "unauthenticated", "invalid"},
		{"expired", testenv.Token(t, "alice", map[string]any{"exp": time.Now().Add(-time.Hour).Unix()}), q("/topic/room.1"), 401, "unauthenticated", ""},
		{"revoked", testenv.Token(t, "mallory", nil), q("/topic/room.1"), 401, "revoked", ""},
		{"no permission", noScope, q("/topic/room.1"), 403, "forbidden", "/topic/room.1"},
		{"no permission, other user's rule", noScope, q("/topic/ruled.bob"), 403, "forbidden", ""},
		{"no destination", tok, "limit=5", 400, "bad_request", "destination is required"},
		{"bad destination", tok, q("/topic/a..b"), 400, "bad_request", "destination"},
		{"wildcard", tok, q("/topic/room.*"), 400, "bad_request", "wildcards"},
		{"queue", tok, q("/queue/jobs"), 400, "bad_request", "/topic/"},
		{"limit too big", tok, q("/topic/room.1", "limit", "1001"), 400, "bad_request", "limit"},
		{"limit zero", tok, q("/topic/room.1", "limit", "0"), 400, "bad_request", "limit"},
		{"limit text", tok, q("/topic/room.1", "limit", "ten"), 400, "bad_request", "limit"},
		{"negative after_seq", tok, q("/topic/room.1", "after_seq", "-1"), 400, "bad_request", "after_seq"},
		{"two cursors", tok, q("/topic/room.1", "after_seq", "1", "after_id", "1"), 400, "bad_request", "at most one"},
		{"twice", tok, q("/topic/room.1", "after_seq", "1", "after_seq", "2"), 400, "bad_request", "more than once"},
		{"after_seq on an exchange", tok, q("/exchange/x/k", "after_seq", "1"), 400, "bad_request", "after_seq"},
	} {
		code, _, e := f.get(t, c.token, c.query)
		if code != c.code || e["error"] != c.errCode || !strings.Contains(e["message"], c.text) {
			t.Errorf("%s: %d %v", c.name, code, e)
		}
	}
}

// Since returns what the journal broadcast: the same headers and
// properties as the live message.
func TestSinceMatchesBroadcast(t *testing.T) {
	t.Parallel()
	pool := testenv.Pool(t, testenv.DB(t))
	ctx := context.Background()
	if err := persist.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := pool.Exec(ctx, `SELECT stompgate_publish('s', $1::text, 'text/plain', '{"n": 3, "t": true}', 'bob')`, fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	ms, err := history.Since(ctx, pool, "s", 2, 10)
	if err != nil || len(ms) != 3 || ms[0].Seq != 3 || string(ms[0].Body) != "2" {
		t.Fatalf("%v %+v", err, ms)
	}
	p := ms[0].Publishing()
	if p.Headers["x-seq"] != int64(3) || p.Headers["x-user-id"] != "bob" || p.Headers["x-message-id"] != ms[0].MessageID ||
		p.Headers["n"] != int64(3) || p.Headers["t"] != "true" || p.MessageId != ms[0].MessageID || p.ContentType != "text/plain" {
		t.Fatalf("publishing %+v", p)
	}
	if _, err := history.Since(ctx, pool, "s", 0, 1001); err == nil {
		t.Fatal("limit 1001 accepted")
	}
	if n, err := history.LastSeq(ctx, pool, "s"); err != nil || n != 5 {
		t.Fatalf("last seq %d %v", n, err)
	}
	if n, err := history.LastSeq(ctx, pool, "none"); err != nil || n != 0 {
		t.Fatalf("last seq of nothing %d %v", n, err)
	}
}
