package auth

import (
	"strings"
	"testing"
)

func perms(t testing.TB, sub string, rules string, scopes ...string) *Permissions {
	t.Helper()
	var r *Rules
	if rules != "" {
		var err error
		if r, err = ParseRules(strings.NewReader(rules)); err != nil {
			t.Fatal(err)
		}
	}
	p, err := NewPermissions(Identity{Subject: sub, Scopes: scopes}, r)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type canCase struct {
	action Action
	dest   string
	want   bool
}

func checkCan(t *testing.T, p *Permissions, cases []canCase) {
	t.Helper()
	for _, c := range cases {
		if got := p.Can(c.action, c.dest); got != c.want {
			t.Errorf("sub %q: Can(%s, %q) = %v, want %v", p.Subject(), c.action, c.dest, got, c.want)
		}
	}
}

func TestPermissionsSubsetRule(t *testing.T) {
	tests := []struct {
		grant string
		cases []canCase
	}{
		{"subscribe:/topic/room.*", []canCase{
			{Subscribe, "/topic/room.1", true},
			{Subscribe, "/topic/room.*", true},
			{Subscribe, "/topic/room.#", false},
			{Subscribe, "/topic/#", false},
			{Subscribe, "/topic/*", false},
			{Subscribe, "/topic/*.1", false},
			{Subscribe, "/topic/room", false},
			{Subscribe, "/topic/room.1.2", false},
			{Subscribe, "/topic/room.*.*", false},
			{Subscribe, "/topic/hall.1", false},
			{Send, "/topic/room.1", false}, // other action
			{Subscribe, "/exchange/amq.topic/room.1", true},
			{Subscribe, "/exchange/amq.topic/room.*", true},
			{Subscribe, "/exchange/amq.topic/#", false},
			{Subscribe, "/exchange/amq.topic", false},
			{Subscribe, "/exchange/other/room.1", false},
			{Subscribe, "/queue/room.1", false},
			{Subscribe, "/app/room.1", false},
		}},
		{"subscribe:/topic/#", []canCase{
			{Subscribe, "/topic/room.*", true},
			{Subscribe, "/topic/room.#", true},
			{Subscribe, "/topic/#", true},
			{Subscribe, "/topic/a.b.c", true},
			{Subscribe, "/exchange/amq.topic/#", true},
			{Subscribe, "/exchange/amq.topic", true},
			{Subscribe, "/exchange/amq.direct/x", false},
			{Subscribe, "/queue/x", false},
		}},
		{"subscribe:/topic/room.#", []canCase{
			{Subscribe, "/topic/room", true},
			{Subscribe, "/topic/room.a.b", true},
			{Subscribe, "/topic/room.*.#", true},
			{Subscribe, "/topic/room.#.x", true},
			{Subscribe, "/topic/room.#", true},
			{Subscribe, "/topic/#.room", false},
			{Subscribe, "/topic/*", false},
			{Subscribe, "/topic/rooms", false},
		}},
		{"subscribe:/topic/*.x", []canCase{
			{Subscribe, "/topic/a.x", true},
			{Subscribe, "/topic/*.x", true},
			{Subscribe, "/topic/#.x", false},
			{Subscribe, "/topic/a.*", false},
			{Subscribe, "/topic/x", false},
		}},
		{"subscribe:/topic/#.x.#", []canCase{
			{Subscribe, "/topic/a.x.b", true},
			{Subscribe, "/topic/x", true},
			{Subscribe, "/topic/*.x", true},
			{Subscribe, "/topic/#.x", true},
			{Subscribe, "/topic/#", false},
			{Subscribe, "/topic/a.*.b", false},
		}},
		{"subscribe:/exchange/amq.topic/room.*", []canCase{ // the same grant as /topic/room.*
			{Subscribe, "/topic/room.1", true},
			{Subscribe, "/topic/#", false},
		}},
		{"send:/exchange/orders/#", []canCase{
			{Send, "/exchange/orders/eu.new", true},
			{Send, "/exchange/orders", true},
			{Send, "/exchange/orders2/eu", false},
			{Send, "/exchange/other/eu.new", false},
			{Send, "/topic/eu.new", false},
		}},
		{"subscribe:/exchange/#", []canCase{ // every exchange, any key or none
			{Subscribe, "/exchange/orders", true},
			{Subscribe, "/exchange/orders/eu.new", true},
			{Subscribe, "/exchange/amq.direct/x", true},
			{Subscribe, "/exchange/orders/#", true},
			{Subscribe, "/exchange/amq.topic/x", false}, // that is /topic/x: its own grant
			{Subscribe, "/topic/x", false},
			{Send, "/exchange/orders/x", false},
		}},
		{"send:/exchange/*/eu.*", []canCase{ // any exchange, keys eu.<one>
			{Send, "/exchange/orders/eu.new", true},
			{Send, "/exchange/billing/eu.paid", true},
			{Send, "/exchange/orders/us.new", false},
			{Send, "/exchange/orders/eu.new.x", false},
			{Send, "/exchange/orders", false},
		}},
		{"send:/exchange/*", []canCase{ // any bare exchange
			{Send, "/exchange/orders", true},
			{Send, "/exchange/orders/x", false},
		}},
		{"send:/exchange/orders", []canCase{
			{Send, "/exchange/orders", true},
			{Send, "/exchange/orders/x", false},
		}},
		{"subscribe:/queue/jobs", []canCase{
			{Subscribe, "/queue/jobs", true},
			{Subscribe, "/amq/queue/jobs", false},
			{Subscribe, "/queue/jobs.x", false},
			{Subscribe, "/queue/*", false},
		}},
		{"subscribe:/amq/queue/jobs", []canCase{
			{Subscribe, "/amq/queue/jobs", true},
			{Subscribe, "/queue/jobs", false},
		}},
		{"send:/app/chat.*", []canCase{
			{Send, "/app/chat.room1", true},
			{Send, "/topic/chat.room1", false},
			{Send, "/app/chat.room1.x", false},
		}},
		{"send:/user/*/queue/inbox", []canCase{
			{Send, "/user/alice/queue/inbox", true},
			{Send, "/user/x/queue/y/queue/inbox", true},
			{Send, "/user/alice/queue/other", false},
			{Send, "/user/queue/inbox", false},
		}},
		{"send:/reply-queue/#", []canCase{
			{Send, "/reply-queue/amq.gen-1", true},
			{Subscribe, "/reply-queue/amq.gen-1", false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.grant, func(t *testing.T) {
			p := perms(t, "alice", "", tt.grant)
			if s := p.Skipped(); len(s) > 0 {
				t.Fatalf("skipped: %v", s)
			}
			checkCan(t, p, tt.cases)
		})
	}
}

func TestPermissionsBuiltIn(t *testing.T) {
	p := perms(t, "alice", "")
	checkCan(t, p, []canCase{
		{Send, "/temp-queue/replies", true},
		{Subscribe, "/temp-queue/replies", true},
		{Declare, "/temp-queue/replies", false},
		{Send, "/edge/refresh", true},
		{Subscribe, "/edge/refresh", false},
		{Declare, "/edge/refresh", false},
		{Subscribe, "/user/queue/inbox", false}, // only with a rule
		{Send, "/topic/a", false},
		{Send, "/topic/a..b", false},
		{Action(0), "/temp-queue/x", false},
		{Action(9), "/temp-queue/x", false},
	})
	var nilPerms *Permissions
	if nilPerms.Can(Send, "/temp-queue/x") {
		t.Fatal("nil permissions allowed something")
	}
}

const exampleRules = `# defaults for every user
; also a comment
// and this

subscribe:/user/queue/*
send:/user/{sub}/queue/*
subscribe:/topic/user.{sub}
subscribe:/topic/user.{sub}.#
send:/topic/team-{sub}.*
subscribe:/queue/inbox.{sub}
declare:/queue/inbox.{sub}
send:/exchange/{sub}/#
`

func TestRulesDefaults(t *testing.T) {
	p := perms(t, "alice", exampleRules)
	if s := p.Skipped(); len(s) > 0 {
		t.Fatalf("skipped: %v", s)
	}
	checkCan(t, p, []canCase{
		{Subscribe, "/user/queue/inbox", true},
		{Subscribe, "/user/queue/*", true},
		{Send, "/user/alice/queue/inbox", true},
		{Send, "/user/bob/queue/inbox", false},
		{Send, "/user/*/queue/inbox", false},
		{Subscribe, "/topic/user.alice", true},
		{Subscribe, "/topic/user.alice.x.y", true},
		{Subscribe, "/topic/user.bob", false},
		{Subscribe, "/topic/user.*", false},
		{Subscribe, "/topic/user.#", false},
		{Send, "/topic/team-alice.x", true},
		{Send, "/topic/team-bob.x", false},
		{Subscribe, "/queue/inbox.alice", true},
		{Declare, "/queue/inbox.alice", true},
		{Declare, "/queue/inbox.bob", false},
		{Send, "/exchange/alice/x", true},
		{Send, "/exchange/bob/x", false},
	})
}

// A subject is substituted as a literal after the pattern is parsed: no
// subject can add a wildcard, a segment, a path or another user.
func TestRulesSubjectInjection(t *testing.T) {
	tests := []struct {
		sub   string
		cases []canCase
	}{
		{"#", []canCase{
			{Subscribe, "/topic/user.#", false},
			{Subscribe, "/topic/user.bob", false},
			{Subscribe, "/topic/user", false},
			{Subscribe, "/topic/user.x.y", false},
			{Subscribe, "/queue/inbox.bob", false},
			{Send, "/user/bob/queue/inbox", false},
			{Send, "/user/#/queue/inbox", true}, // its own personal queue
			{Send, "/exchange/bob/x", false},
			{Send, "/exchange/#/x", false}, // refused as a destination anyway
		}},
		{"*", []canCase{
			{Subscribe, "/topic/user.bob", false},
			{Subscribe, "/topic/user.*", false},
			{Send, "/user/bob/queue/inbox", false},
			{Send, "/user/*/queue/inbox", true}, // literally the user "*"
			{Send, "/topic/team-bob.x", false},
		}},
		{"a.b", []canCase{
			{Subscribe, "/topic/user.a.b", false},
			{Subscribe, "/topic/user.a", false},
			{Subscribe, "/topic/user.a.b.c", false},
			{Subscribe, "/queue/inbox.a.b", false},
			{Send, "/user/a.b/queue/inbox", true},
			{Send, "/exchange/a.b/x", true}, // an exchange name may hold dots
			{Send, "/exchange/a/b.x", false},
		}},
		{"a.#", []canCase{
			{Subscribe, "/topic/user.a", false},
			{Subscribe, "/topic/user.a.x", false},
			{Subscribe, "/topic/user.a.#", false},
		}},
		{"bob/queue/x", []canCase{
			{Send, "/user/bob/queue/x", false},
			{Send, "/user/bob/queue/inbox", false},
			{Send, "/user/bob/queue/x/queue/inbox", true},
			{Subscribe, "/topic/user.bob", false},
		}},
		{"x/../y", []canCase{
			{Subscribe, "/queue/inbox.x", false},
			{Subscribe, "/queue/y", false},
		}},
		{"{sub}", []canCase{ // no recursive substitution
			{Subscribe, "/topic/user.{sub}", true},
			{Subscribe, "/topic/user.alice", false},
		}},
		{"bob", []canCase{ // control: an ordinary subject works
			{Subscribe, "/topic/user.bob", true},
			{Subscribe, "/topic/user.bob.x", true},
			{Send, "/user/bob/queue/inbox", true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.sub, func(t *testing.T) {
			checkCan(t, perms(t, tt.sub, exampleRules), tt.cases)
		})
	}
}

func TestTokenScopes(t *testing.T) {
	p := perms(t, "alice", "",
		"openid", "profile", "email", "read:things", // not ours: ignored silently
		"send:topic/x",           // no leading slash
		"send:/topic/a..b",       // empty segment
		"subscribe:/topic/room*", // wildcard inside a segment
		"subscribe:/temp-queue/x",
		"send:/user/{sub}/queue/x", // {sub} only in rules
		"send:/edge/refresh",
		"declare:/queue/jobs",
		"subscribe:/topic/ok",
	)
	if got := len(p.Skipped()); got != 6 {
		t.Fatalf("skipped %d: %q", got, p.Skipped())
	}
	checkCan(t, p, []canCase{
		{Subscribe, "/topic/ok", true},
		{Declare, "/queue/jobs", true},
		{Send, "/user/alice/queue/x", false},
		{Subscribe, "/topic/room*", false},
	})
	if _, err := NewPermissions(Identity{Subject: ""}, nil); err == nil {
		t.Fatal("empty subject accepted")
	}
	if _, err := NewPermissions(Identity{Subject: "a\nb"}, nil); err == nil {
		t.Fatal("subject with a newline accepted")
	}
}

func TestParseRules(t *testing.T) {
	r, err := ParseRules(strings.NewReader(exampleRules))
	if err != nil || r.Len() != 8 {
		t.Fatalf("%v, %d rules", err, r.Len())
	}
	bad := "subscribe:/topic/ok\nread:/topic/x\nsend:/topic/a..b\nsubscribe:/topic/room*\nsend:/temp-queue/x\nsend:/edge/refresh\nsend:topic/x\n#nospace\nsubscribe:/exchange/#/x\nsubscribe:/exchange/ord*rs/x\n"
	_, err = ParseRules(strings.NewReader(bad))
	if err == nil {
		t.Fatal("bad rules accepted")
	}
	for _, line := range []string{"line 2:", "line 3:", "line 4:", "line 5:", "line 6:", "line 7:", "line 8:", "line 9:", "line 10:"} {
		if !strings.Contains(err.Error(), line) {
			t.Errorf("error does not name %s\n%v", line, err)
		}
	}
	if strings.Contains(err.Error(), "line 1:") {
		t.Errorf("good line reported: %v", err)
	}
	var nilRules *Rules
	if nilRules.Len() != 0 {
		t.Fatal("nil rules")
	}
	if r, err := LoadRules(""); r != nil || err != nil {
		t.Fatal("empty path")
	}
	if _, err := LoadRules("/nonexistent/acl"); err == nil {
		t.Fatal("missing file accepted")
	}
}

func TestSegmentsCoverSound(t *testing.T) {
	// Exhaustive check on a small alphabet: whenever segmentsCover says a
	// request is covered, every concrete key the request matches is matched
	// by the pattern.
	words := []string{"a", "b", "*", "#"}
	var all [][]string
	var gen func(prefix []string, n int)
	gen = func(prefix []string, n int) {
		all = append(all, append([]string(nil), prefix...))
		if n == 0 {
			return
		}
		for _, w := range words {
			gen(append(prefix, w), n-1)
		}
	}
	gen(nil, 3)
	var concrete [][]string
	for _, k := range all {
		if !strings.ContainsAny(strings.Join(k, ""), "*#") {
			concrete = append(concrete, k)
		}
	}
	// keys of up to 4 segments over {a,b,c}: c stands for "any other word"
	var keys [][]string
	var genK func(prefix []string, n int)
	genK = func(prefix []string, n int) {
		keys = append(keys, append([]string(nil), prefix...))
		if n == 0 {
			return
		}
		for _, w := range []string{"a", "b", "c"} {
			genK(append(prefix, w), n-1)
		}
	}
	genK(nil, 4)
	toPat := func(s []string) []segment {
		var out []segment
		for _, w := range s {
			if w == "*" || w == "#" {
				out = append(out, segment{wild: w[0]})
			} else {
				out = append(out, segment{lit: w})
			}
		}
		return out
	}
	for _, pat := range all {
		for _, req := range all {
			if !segmentsCover(toPat(pat), req) {
				continue
			}
			for _, k := range keys {
				if matchKey(toPat(req), k) && !matchKey(toPat(pat), k) {
					t.Fatalf("pattern %q said to cover %q, but %q matches only the request", pat, req, k)
				}
			}
		}
		// A concrete request is covered exactly when the pattern matches it.
		for _, k := range concrete {
			if segmentsCover(toPat(pat), k) != matchKey(toPat(pat), k) {
				t.Fatalf("pattern %q, key %q: cover and match disagree", pat, k)
			}
		}
	}
}

// matchKey is AMQP topic matching of a concrete key.
func matchKey(p []segment, k []string) bool {
	if len(p) == 0 {
		return len(k) == 0
	}
	switch p[0].wild {
	case '#':
		for i := 0; i <= len(k); i++ {
			if matchKey(p[1:], k[i:]) {
				return true
			}
		}
		return false
	case '*':
		return len(k) > 0 && matchKey(p[1:], k[1:])
	}
	return len(k) > 0 && k[0] == p[0].lit && matchKey(p[1:], k[1:])
}

func BenchmarkCan(b *testing.B) {
	p := perms(b, "alice", exampleRules, "subscribe:/topic/room.*", "send:/topic/room.*", "send:/app/chat.#")
	b.ReportAllocs()
	for b.Loop() {
		if !p.Can(Send, "/app/chat.room1.x") {
			b.Fatal("denied")
		}
	}
}
