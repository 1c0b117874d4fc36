package auth

// Fuzz targets for the destination normaliser, the token extractors and
// ACL patterns (issue 10, point 9). Each states properties that can fail,
// checked against small independent re-statements of SPEC §3 written here
// (family, reconstruct) rather than against the code under test. `make
// fuzz` runs each briefly on top of the seeds below; a crasher found by a
// longer run lands in testdata/fuzz/<Target>/ and is replayed by every
// plain `go test` from then on.

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/go-stomp/stomp/v3/frame"
)

// family classifies a destination or a pattern by its prefix alone, the way
// SPEC §3–§5 describe them: the kind name (as Kind.String spells it), the
// exchange or subject it is scoped to, and the '.'-separated name after the
// prefix. ok is false for an unknown prefix.
func family(s string) (fam, scope, name string, ok bool) {
	for _, p := range []struct{ prefix, fam string }{
		{"/topic/", "topic"}, {"/queue/", "queue"}, {"/amq/queue/", "amq-queue"},
		{"/temp-queue/", "temp-queue"}, {"/reply-queue/", "reply-queue"}, {"/app/", "app"},
	} {
		if rest, found := strings.CutPrefix(s, p.prefix); found {
			return p.fam, "", rest, true
		}
	}
	if rest, found := strings.CutPrefix(s, "/exchange/"); found {
		ex, key, _ := strings.Cut(rest, "/")
		if ex == "amq.topic" {
			return "topic", "", key, true
		}
		return "exchange", ex, key, true
	}
	if rest, found := strings.CutPrefix(s, "/user/"); found {
		if own, mine := strings.CutPrefix(rest, "queue/"); mine && !strings.Contains(own, "/") {
			return "user-queue", "", own, true
		}
		if i := strings.LastIndex(rest, "/queue/"); i > 0 {
			return "user", rest[:i], rest[i+len("/queue/"):], true
		}
		return "", "", "", false
	}
	if s == EdgeRefresh {
		return "edge-refresh", "", "", true
	}
	return "", "", "", false
}

// hasControl is an independent statement of "control characters" in SPEC
// §3: C0, DEL and C1.
func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return true
		}
	}
	return false
}

// reconstruct rebuilds the client destination from a parsed Destination's
// fields.
func reconstruct(d Destination, raw string) string {
	switch d.Kind {
	case KindTopic:
		if strings.HasPrefix(raw, "/exchange/") {
			if d.Name == "" {
				return "/exchange/" + AMQPTopicExchange
			}
			return "/exchange/" + AMQPTopicExchange + "/" + d.Name
		}
		return "/topic/" + d.Name
	case KindExchange:
		if d.Name == "" {
			return "/exchange/" + d.Exchange
		}
		return "/exchange/" + d.Exchange + "/" + d.Name
	case KindQueue:
		return "/queue/" + d.Name
	case KindAMQQueue:
		return "/amq/queue/" + d.Name
	case KindTempQueue:
		return "/temp-queue/" + d.Name
	case KindReplyQueue:
		return "/reply-queue/" + d.Name
	case KindApp:
		return "/app/" + d.Name
	case KindUserQueue:
		return "/user/queue/" + d.Name
	case KindUser:
		return "/user/" + d.User + "/queue/" + d.Name
	case KindEdgeRefresh:
		return EdgeRefresh
	}
	return "?"
}

var destinationSeeds = []string{
	"/topic/a.b", "/topic/room.*", "/topic/#", "/topic/a..b", "/topic/.a", "/topic/a.",
	"/queue/jobs", "/amq/queue/q", "/temp-queue/t", "/reply-queue/amq.gen-1", "/app/chat.1",
	"/exchange/amq.topic/#", "/exchange/amq.topic", "/exchange/x", "/exchange/x/k.y", "/exchange/x/",
	"/exchange/a*b/k", "/user/queue/inbox", "/user/alice/queue/inbox", "/user/a/queue/b/queue/c",
	"/user/queue/queue/x", "/user//queue/x", "/edge/refresh", "/edge/other", "/topic/a\x00b",
	"/topic/a\u0085", "/topic/\xff", "/nope/x", "", "/topic/" + strings.Repeat("a", 520),
}

// FuzzDestinationRoundTrip: ParseDestination accepts only text without
// controls or empty segments, classifies by prefix as SPEC §3 says, and
// its fields rebuild exactly the raw string (ParseDestination∘Raw is the
// identity); appending '.' or '/', or inserting a control character, is
// always refused.
func FuzzDestinationRoundTrip(f *testing.F) {
	for i, s := range destinationSeeds {
		f.Add(s, uint16(i))
	}
	f.Fuzz(func(t *testing.T, s string, at uint16) {
		d, err := ParseDestination(s)
		if err != nil {
			if !errors.Is(err, ErrBadDestination) {
				t.Fatalf("%q: error %v does not wrap ErrBadDestination", s, err)
			}
			return
		}
		if d.Raw != s || s == "" || len(s) > MaxDestinationBytes || !utf8.ValidString(s) || hasControl(s) {
			t.Fatalf("accepted %q (%+v)", s, d)
		}
		fam, scope, name, ok := family(s)
		if !ok || fam != d.Kind.String() {
			t.Fatalf("%q parsed as %s, its prefix says %q", s, d.Kind, fam)
		}
		if name != d.Name || (d.Kind == KindExchange && scope != d.Exchange) || (d.Kind == KindUser && scope != d.User) {
			t.Fatalf("%q: parsed %+v, prefix says scope %q name %q", s, d, scope, name)
		}
		if got := reconstruct(d, s); got != s {
			t.Fatalf("%q: fields rebuild %q", s, got)
		}
		again, err := ParseDestination(d.Raw)
		if err != nil || again != d {
			t.Fatalf("%q: reparsing Raw gave %+v, %v", s, again, err)
		}
		wild := false
		for _, seg := range d.Segments() {
			if seg == "" || strings.Contains(seg, "/") {
				t.Fatalf("%q: segment %q", s, seg)
			}
			wild = wild || seg == "*" || seg == "#"
		}
		if wild != d.Wildcard() {
			t.Fatalf("%q: Wildcard() = %v", s, d.Wildcard())
		}
		if d.Kind == KindExchange && (d.Exchange == "" || strings.ContainsAny(d.Exchange, "/*#")) {
			t.Fatalf("%q: exchange %q", s, d.Exchange)
		}
		for _, bad := range []string{s + ".", s + "/"} {
			if len(bad) <= MaxDestinationBytes {
				if _, err := ParseDestination(bad); err == nil {
					t.Fatalf("%q accepted (trailing empty segment or '/')", bad)
				}
			}
		}
		i := int(at) % (len(s) + 1)
		for _, c := range []string{"\x00", "\n", "\r", "\x7f", "\u0085"} {
			if _, err := ParseDestination(s[:i] + c + s[i:]); err == nil {
				t.Fatalf("%q with %q inserted at %d accepted", s, c, i)
			}
		}
	})
}

// FuzzUpgradeToken: the upgrade request's token comes from the first
// source of SPEC §3 that holds one (Authorization: Bearer, access_token,
// the cookie); a source is reported only with a non-empty token, and the
// token is exactly what that source carried.
func FuzzUpgradeToken(f *testing.F) {
	for _, s := range [][4]string{
		{"Bearer abc.def.ghi", "", "", "access_token"},
		{"bearer  tok ", "access_token=q", "access_token=c", "access_token"},
		{"Basic dXNlcjpwYXNz", "access_token=q&x=1", "", "access_token"},
		{"", "access_token=a%20b&access_token=2", "", "access_token"},
		{"", "", "access_token=c; other=1", "access_token"},
		{"", "", "sid=1; access_token=", "access_token"},
		{"Bearer ", "access_token=q", "", "access_token"},
		{"Bearer    ", "access_token=q", "", "access_token"},
		{"", "access_token=", "jwt=c", "jwt"},
		{"Bearer\tx", "%zz", "access_token=c", ""},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	f.Fuzz(func(t *testing.T, authz, rawQuery, cookie, cookieName string) {
		r := &http.Request{Method: "GET", URL: &url.URL{Path: "/ws", RawQuery: rawQuery}, Header: http.Header{}}
		if authz != "" {
			r.Header.Set("Authorization", authz)
		}
		if cookie != "" {
			r.Header.Set("Cookie", cookie)
		}
		tok, src := UpgradeToken(r, cookieName)
		if (tok == "") != (src == "") {
			t.Fatalf("token %q from source %q", tok, src)
		}
		fromHeader := bearerToken(authz)
		fromQuery := r.URL.Query().Get("access_token")
		fromCookie := ""
		if cookieName != "" {
			if c, err := r.Cookie(cookieName); err == nil {
				fromCookie = c.Value
			}
		}
		var want string
		var wantSrc TokenSource
		switch {
		case fromHeader != "":
			want, wantSrc = fromHeader, SourceHeader
		case fromQuery != "":
			want, wantSrc = fromQuery, SourceQuery
		case fromCookie != "":
			want, wantSrc = fromCookie, SourceCookie
		}
		if tok != want || src != wantSrc {
			t.Fatalf("Authorization %q, query %q, cookie %q (%q): got %q from %q, want %q from %q",
				authz, rawQuery, cookie, cookieName, tok, src, want, wantSrc)
		}
	})
}

// bearerToken is an independent reading of "Authorization: Bearer <jwt>":
// the scheme is case-insensitive, one space follows it, the token is what
// remains without surrounding blanks; "" when there is none.
func bearerToken(v string) string {
	if len(v) < 7 || !strings.EqualFold(v[:7], "bearer ") {
		return ""
	}
	return strings.TrimSpace(v[7:])
}

// FuzzConnectToken: on CONNECT, "Authorization: Bearer <jwt>" (either
// spelling of the name) wins over passcode; a source is reported only with a
// non-empty token, and the token is what that header carried.
func FuzzConnectToken(f *testing.F) {
	for _, s := range [][3]string{
		{"Bearer abc", "", ""},
		{"", "bearer abc", "pass"},
		{"Bearer ", "", "pass"},
		{"Bearer   ", "Bearer x", "pass"},
		{"Basic abc", "", "pass"},
		{"", "", "eyJ.x.y"},
		{"BEARER  t  ", "", ""},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, upper, lower, passcode string) {
		h := frame.NewHeader()
		if upper != "" {
			h.Add("Authorization", upper)
		}
		if lower != "" {
			h.Add("authorization", lower)
		}
		if passcode != "" {
			h.Add(frame.Passcode, passcode)
		}
		tok, src := ConnectToken(h)
		if (tok == "") != (src == "") {
			t.Fatalf("token %q from source %q", tok, src)
		}
		var want string
		var wantSrc TokenSource
		switch {
		case bearerToken(upper) != "":
			want, wantSrc = bearerToken(upper), SourceConnect
		case bearerToken(lower) != "":
			want, wantSrc = bearerToken(lower), SourceConnect
		case passcode != "":
			want, wantSrc = passcode, SourcePasscode
		}
		if tok != want || src != wantSrc {
			t.Fatalf("Authorization %q, authorization %q, passcode %q: got %q from %q, want %q from %q",
				upper, lower, passcode, tok, src, want, wantSrc)
		}
	})
}

// FuzzPermissions: one permission entry, as a token scope and as an
// EDGE_ACL_FILE rule for subject sub, checked against a destination.
//   - Can(a, d) implies d parses, a is a real action and the entry's verb is
//     a (or d is built in: /temp-queue/, /edge/refresh);
//   - a grant never covers a destination outside its prefix family, its
//     exchange or its subject (SPEC §3: /exchange/amq.topic/<key> is a
//     /topic/ destination and never falls under an /exchange/ grant);
//   - the pattern's literal segments before its first wildcard are the
//     destination's, {sub} expanding to exactly one literal segment, so a
//     subject can never widen a rule; without '#' the lengths agree;
//   - a wildcard destination allowed means each of its instances is allowed
//     (the subset rule);
//   - a rule ParseRules accepts compiles for every valid subject, and as a
//     token scope (without {sub}) grants exactly what the rule grants.
func FuzzPermissions(f *testing.F) {
	for _, s := range [][3]string{
		{"subscribe:/topic/room.*", "alice", "/topic/room.1"},
		{"subscribe:/topic/room.*", "alice", "/topic/room.*"},
		{"subscribe:/topic/room.*", "alice", "/topic/room.#"},
		{"subscribe:/topic/#", "alice", "/exchange/amq.topic/a.b"},
		{"send:/exchange/#", "alice", "/exchange/amq.topic/a"},
		{"send:/exchange/*/k.#", "alice", "/exchange/x/k"},
		{"send:/exchange/{sub}/#", "a/b", "/exchange/a/b/c"},
		{"send:/user/{sub}/queue/*", "bob/queue/x", "/user/bob/queue/x/queue/y"},
		{"send:/user/*/queue/inbox", "bob", "/user/eve/queue/inbox"},
		{"subscribe:/topic/user.{sub}", "a.b", "/topic/user.a.b"},
		{"subscribe:/topic/user.{sub}.#", "#", "/topic/user.#"},
		{"send:/topic/team-{sub}.*", "*", "/topic/team-*.x"},
		{"subscribe:/queue/inbox.{sub}", "x", "/queue/inbox.x"},
		{"declare:/queue/inbox.{sub}", "x", "/queue/inbox.x"},
		{"subscribe:/user/queue/*", "x", "/user/queue/inbox"},
		{"send:/app/chat.#", "x", "/app/chat"},
		{"subscribe:/amq/queue/q", "x", "/queue/q"},
		{"subscribe:/topic/a*", "x", "/topic/a*"},
		{"send:/temp-queue/x", "x", "/temp-queue/x"},
		{"openid", "x", "/edge/refresh"},
	} {
		for a := range uint8(4) {
			f.Add(s[0], s[1], a, s[2])
		}
	}
	f.Fuzz(func(t *testing.T, entry, sub string, action uint8, dest string) {
		a := Action(action % 4) // 0 is not an action and must grant nothing
		var rules *Rules
		if !strings.ContainsAny(entry, "\r\n") && entry == strings.TrimSpace(entry) {
			if r, err := ParseRules(strings.NewReader(entry)); err == nil && r.Len() == 1 {
				rules = r
			}
		}
		pRule, err := NewPermissions(Identity{Subject: sub}, rules)
		if err != nil {
			if !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("subject %q: %v", sub, err)
			}
			return
		}
		if rules != nil && len(pRule.Skipped()) > 0 {
			t.Fatalf("rule %q accepted by ParseRules but skipped for subject %q: %v", entry, sub, pRule.Skipped())
		}
		pTok, err := NewPermissions(Identity{Subject: sub, Scopes: []string{entry}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if rules != nil && !strings.Contains(entry, SubjectPlaceholder) {
			if len(pTok.Skipped()) > 0 {
				t.Fatalf("rule %q is valid but as a scope entry it is skipped: %v", entry, pTok.Skipped())
			}
			if pTok.Can(a, dest) != pRule.Can(a, dest) {
				t.Fatalf("%q as rule and as scope disagree on %s %q", entry, a, dest)
			}
		}
		for _, p := range []*Permissions{pRule, pTok} {
			if p == pRule && rules == nil {
				continue
			}
			checkGrant(t, p, entry, sub, a, dest)
		}
	})
}

func checkGrant(t *testing.T, p *Permissions, entry, sub string, a Action, dest string) {
	t.Helper()
	if !p.Can(a, dest) {
		return
	}
	d, err := ParseDestination(dest)
	if err != nil {
		t.Fatalf("%q grants %s on %q, which does not parse: %v", entry, a, dest, err)
	}
	if a < Subscribe || a > Declare {
		t.Fatalf("%q: Can(%s, %q) for a non-action", entry, a, dest)
	}
	if d.Kind == KindTempQueue || d.Kind == KindEdgeRefresh {
		return // built in (SPEC §3); no grant involved
	}
	verb, pat, _ := strings.Cut(entry, ":")
	if verb != a.String() {
		t.Fatalf("%q grants %s on %q", entry, a, dest)
	}
	pf, pscope, pname, ok := family(pat)
	df, dscope, dname, _ := family(dest)
	if !ok || pf != df {
		t.Fatalf("%q (%s) grants %s on %q (%s)", entry, pf, a, dest, df)
	}
	expand := func(s string) string { return strings.ReplaceAll(s, SubjectPlaceholder, sub) }
	if pscope != "*" && pscope != "#" && expand(pscope) != dscope {
		t.Fatalf("%q (scope %q) grants %s on %q (scope %q) for subject %q", entry, pscope, a, dest, dscope, sub)
	}
	if pscope == "#" {
		return // /exchange/#: every exchange and key
	}
	var psegs, dsegs []string
	if pname != "" {
		psegs = strings.Split(pname, ".")
	}
	if dname != "" {
		dsegs = strings.Split(dname, ".")
	}
	hash := false
	for i, s := range psegs {
		if s == "*" || s == "#" {
			hash = hash || s == "#"
			for _, r := range psegs[i:] {
				hash = hash || r == "#"
			}
			break
		}
		if i >= len(dsegs) || dsegs[i] != expand(s) {
			t.Fatalf("%q grants %s on %q for subject %q: segment %d is not %q", entry, a, dest, sub, i, expand(s))
		}
	}
	if !hash && !strings.Contains(dname, "#") && len(psegs) != len(dsegs) {
		t.Fatalf("%q (%d segments, no '#') grants %s on %q (%d segments)", entry, len(psegs), a, dest, len(dsegs))
	}
	if !d.Wildcard() {
		return
	}
	// The subset rule: every instance of an allowed wildcard destination
	// is allowed ('*' → one word, '#' → one word, or none).
	prefix := dest[:len(dest)-len(d.Name)]
	for _, hashTo := range []string{"z", "z.z", ""} {
		var out []string
		for _, s := range dsegs {
			switch {
			case s == "*":
				out = append(out, "z")
			case s == "#" && hashTo != "":
				out = append(out, hashTo)
			case s == "#":
			default:
				out = append(out, s)
			}
		}
		if len(out) == 0 || len(prefix+strings.Join(out, ".")) > MaxDestinationBytes {
			continue
		}
		inst := prefix + strings.Join(out, ".")
		if !p.Can(a, inst) {
			t.Fatalf("%q grants %s on %q but not on its instance %q", entry, a, dest, inst)
		}
	}
}

// TestBlankBearerFallsThrough is the regression test of what
// FuzzUpgradeToken and FuzzConnectToken found: a blank "Bearer " header
// holds no token and the next source is used.
func TestBlankBearerFallsThrough(t *testing.T) {
	r := &http.Request{URL: &url.URL{RawQuery: "access_token=q"}, Header: http.Header{"Authorization": {"Bearer    "}}}
	if tok, src := UpgradeToken(r, "access_token"); tok != "q" || src != SourceQuery {
		t.Errorf("upgrade: %q from %q, want the access_token parameter", tok, src)
	}
	h := frame.NewHeader("Authorization", "Bearer \t ", frame.Passcode, "p")
	if tok, src := ConnectToken(h); tok != "p" || src != SourcePasscode {
		t.Errorf("CONNECT: %q from %q, want the passcode", tok, src)
	}
}
