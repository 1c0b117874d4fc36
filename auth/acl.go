package auth

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Action is what a client wants to do with a destination.
type Action uint8

const (
	Subscribe Action = iota + 1 // SUBSCRIBE, reply-to, history reads
	Send                        // SEND
	Declare                     // queue-creating / reshaping headers (header firewall)
)

func (a Action) String() string {
	switch a {
	case Subscribe:
		return "subscribe"
	case Send:
		return "send"
	case Declare:
		return "declare"
	}
	return fmt.Sprintf("Action(%d)", a)
}

func parseAction(s string) (Action, bool) {
	switch s {
	case "subscribe":
		return Subscribe, true
	case "send":
		return Send, true
	case "declare":
		return Declare, true
	}
	return 0, false
}

// SubjectPlaceholder in a rule is replaced by the caller's subject.
const SubjectPlaceholder = "{sub}"

// Rules are the permissions every authenticated user gets, from
// EDGE_ACL_FILE, on top of the token's scope. Immutable after loading; safe
// for concurrent use. A nil *Rules grants nothing.
//
// File format: one entry per line, in the same syntax as a scope entry,
// "<action>:<pattern>", action one of subscribe, send, declare. Blank lines
// and lines whose first non-blank character is ';' or "//" are ignored, as
// is a line starting with "# " (a '#' followed by a space; a pattern never
// starts with '#'). "{sub}" anywhere in a pattern stands for the caller's
// subject, substituted after the pattern is parsed: a subject can only ever
// be a literal, so a subject of "#", "*" or "a.b" cannot widen a rule (such
// a subject simply never matches a '.'-segmented name). Example:
//
//	# every user: own personal queues, a public room, their own topic
//	subscribe:/user/queue/*
//	send:/user/{sub}/queue/*
//	subscribe:/topic/public.#
//	send:/topic/public.#
//	subscribe:/topic/user.{sub}
//
// Every line must parse; an error names the line.
type Rules struct {
	entries []ruleEntry
}

type ruleEntry struct {
	action Action
	tmpl   string // pattern text, may hold {sub}
	line   int
}

// LoadRules reads a rules file (EDGE_ACL_FILE). An empty path yields nil
// rules (no defaults).
func LoadRules(path string) (*Rules, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("acl file: %w", err)
	}
	defer f.Close()
	r, err := ParseRules(f)
	if err != nil {
		return nil, fmt.Errorf("acl file %s: %w", path, err)
	}
	return r, nil
}

// ParseRules parses rules in the LoadRules format; every bad line is
// reported.
func ParseRules(rd io.Reader) (*Rules, error) {
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 4096), 64<<10)
	r := &Rules{}
	var errs []error
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line == "#" || strings.HasPrefix(line, "# ") || strings.HasPrefix(line, ";") || strings.HasPrefix(line, "//") {
			continue
		}
		action, tmpl, err := parseEntry(line)
		if err == nil {
			// Validate with a harmless stand-in subject.
			_, err = compilePattern(tmpl, "x")
		}
		if errors.Is(err, errNotAPermission) {
			err = errors.New("expected subscribe:<pattern>, send:<pattern> or declare:<pattern>")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("line %d: %w", n, err))
			continue
		}
		r.entries = append(r.entries, ruleEntry{action: action, tmpl: tmpl, line: n})
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return r, nil
}

// Len is the number of rules.
func (r *Rules) Len() int {
	if r == nil {
		return 0
	}
	return len(r.entries)
}

// ErrNotAPermission is returned by parseEntry for scope entries that are not
// stompgate permissions ("openid", "profile", "read:foo"): they are ignored.
var errNotAPermission = errors.New("not a permission entry")

func parseEntry(e string) (Action, string, error) {
	verb, pat, ok := strings.Cut(e, ":")
	if !ok {
		return 0, "", errNotAPermission
	}
	a, ok := parseAction(verb)
	if !ok {
		return 0, "", errNotAPermission
	}
	if !strings.HasPrefix(pat, "/") {
		return 0, "", fmt.Errorf("%s: pattern %q does not start with '/'", verb, pat)
	}
	return a, pat, nil
}

// segment of a compiled pattern: a literal or a wildcard.
type segment struct {
	lit  string
	wild byte // 0 = literal, '*' = exactly one segment, '#' = zero or more
}

// pattern is a compiled grant.
type pattern struct {
	kind     Kind
	exchange string // KindExchange: literal exchange name
	// anyExchange: KindExchange over every exchange name ("/exchange/#",
	// "/exchange/*"). /exchange/amq.topic/<key> is authorised as
	// /topic/<key> (KindTopic) and never falls under it.
	anyExchange bool
	user        string // KindUser: literal subject
	anyUser     bool   // KindUser: "*" in the subject position of the rule
	segs        []segment
	src         string // the entry as written, for Describe
}

// compilePattern parses a rule or scope pattern and substitutes sub for
// {sub}. Structure (prefix, exchange, subject, '.'-segments, wildcards) is
// decided on the template, before substitution, so nothing in sub can add
// a segment or a wildcard: substituted text is always literal.
func compilePattern(tmpl, sub string) (pattern, error) {
	if len(tmpl) > MaxDestinationBytes {
		return pattern{}, badDest("pattern longer than %d bytes", MaxDestinationBytes)
	}
	if err := checkText(tmpl); err != nil {
		return pattern{}, err
	}
	d, err := parseDest(tmpl, true)
	if err != nil {
		return pattern{}, err
	}
	expand := func(s string) string { return strings.ReplaceAll(s, SubjectPlaceholder, sub) }
	p := pattern{kind: d.Kind, src: tmpl}
	switch d.Kind {
	case KindExchange:
		switch {
		case d.Exchange == "#":
			p.anyExchange = true
			p.segs = []segment{{wild: '#'}}
			return p, nil
		case d.Exchange == "*":
			p.anyExchange = true
		case strings.Contains(d.Exchange, SubjectPlaceholder):
			p.exchange = expand(d.Exchange)
		default:
			p.exchange = d.Exchange
		}
	case KindUser:
		if d.User == "*" {
			p.anyUser = true
		} else {
			p.user = expand(d.User)
		}
	case KindTempQueue:
		return pattern{}, badDest("/temp-queue/ is allowed to every user; it needs no rule")
	}
	if d.Name != "" {
		for _, s := range strings.Split(d.Name, ".") {
			switch {
			case s == "*" || s == "#":
				p.segs = append(p.segs, segment{wild: s[0]})
			default:
				p.segs = append(p.segs, segment{lit: expand(s)})
			}
		}
	}
	return p, nil
}

// covers reports whether everything d could match is allowed by p.
func (p *pattern) covers(d *Destination, req []string) bool {
	if p.kind != d.Kind {
		return false
	}
	switch p.kind {
	case KindExchange:
		if !p.anyExchange && p.exchange != d.Exchange {
			return false
		}
	case KindUser:
		if !p.anyUser && p.user != d.User {
			return false
		}
	}
	return segmentsCover(p.segs, req)
}

// segmentsCover decides whether the language of the request segments (in
// which "*" and "#" are wildcards) is a subset of the pattern's. It is a
// dynamic programme over (pattern position, request position):
//
//   - pattern '#' covers the rest if it covers it after absorbing nothing, or
//     after absorbing one request segment of any kind (a literal, '*' or '#');
//   - pattern '*' absorbs exactly one request segment that is a literal or
//     '*', never '#' (which may stand for zero or several segments);
//   - a pattern literal absorbs only the identical request literal.
//
// Each step is sound (only ever concludes "subset" when it is one), so a
// grant is never widened; with several grants each is tried alone.
func segmentsCover(pat []segment, req []string) bool {
	n, m := len(pat), len(req)
	// memo[i][j]: pat[i:] covers req[j:]. Computed backwards.
	memo := make([]bool, (n+1)*(m+1))
	at := func(i, j int) *bool { return &memo[i*(m+1)+j] }
	*at(n, m) = true
	for i := n; i >= 0; i-- {
		for j := m; j >= 0; j-- {
			if i == n {
				*at(i, j) = j == m
				continue
			}
			var ok bool
			switch p := pat[i]; p.wild {
			case '#':
				ok = *at(i+1, j) || (j < m && *at(i, j+1))
			case '*':
				ok = j < m && req[j] != "#" && *at(i+1, j+1)
			default:
				ok = j < m && req[j] != "#" && req[j] != "*" && req[j] == p.lit && *at(i+1, j+1)
			}
			*at(i, j) = ok
		}
	}
	return *at(0, 0)
}

// Permissions are one identity's grants: the token's scope entries plus the
// rules, with {sub} substituted. Built once per identity (at CONNECT and on
// token refresh); immutable and safe for concurrent use.
//
// Built in, without any rule: SEND and SUBSCRIBE on /temp-queue/<name>
// (RabbitMQ scopes temp queues to the session's own broker connection, and
// request/reply needs them), and SEND to exactly /edge/refresh. Everything
// else needs a grant; in particular /user/queue/<name> (own personal queue)
// is only allowed through a rule such as "subscribe:/user/queue/*".
type Permissions struct {
	subject string
	grants  [Declare + 1][]pattern
	skipped []string
}

// NewPermissions compiles id's scope entries and rules. Scope entries that
// are not stompgate permissions ("openid", "email") are ignored; entries
// that look like permissions but do not parse are skipped and listed by
// Skipped (a token is not refused for them). The error is non-nil only for
// an identity without a valid subject.
func NewPermissions(id Identity, rules *Rules) (*Permissions, error) {
	if err := checkSubject(id.Subject); err != nil {
		return nil, err
	}
	p := &Permissions{subject: id.Subject}
	if rules != nil {
		for _, e := range rules.entries {
			pat, err := compilePattern(e.tmpl, id.Subject)
			if err != nil {
				p.skipped = append(p.skipped, fmt.Sprintf("rule line %d: %v", e.line, err))
				continue
			}
			p.grants[e.action] = append(p.grants[e.action], pat)
		}
	}
	for _, s := range id.Scopes {
		a, tmpl, err := parseEntry(s)
		if errors.Is(err, errNotAPermission) {
			continue
		}
		if err == nil {
			if strings.Contains(tmpl, SubjectPlaceholder) {
				// {sub} is a rules-file feature; in a token it is literal
				// text the issuer meant for someone, refuse it.
				err = errors.New("{sub} is only substituted in EDGE_ACL_FILE rules")
			} else {
				var pat pattern
				pat, err = compilePattern(tmpl, id.Subject)
				if err == nil {
					p.grants[a] = append(p.grants[a], pat)
					continue
				}
			}
		}
		p.skipped = append(p.skipped, fmt.Sprintf("scope %q: %v", truncateString(s, 128), err))
	}
	return p, nil
}

// Subject is the subject the permissions were built for.
func (p *Permissions) Subject() string { return p.subject }

// Skipped lists scope entries and rules that could not be compiled for this
// identity (for a debug log line; never contains a token).
func (p *Permissions) Skipped() []string { return p.skipped }

// Can reports whether action is allowed on the destination dest (as sent by
// the client). An invalid destination is never allowed.
func (p *Permissions) Can(action Action, dest string) bool {
	d, err := ParseDestination(dest)
	if err != nil {
		return false
	}
	return p.CanDestination(action, d)
}

// CanDestination is Can for an already parsed destination. A destination
// with wildcard segments is allowed only when one grant covers everything it
// could match (the subset rule of SPEC §3).
func (p *Permissions) CanDestination(action Action, d Destination) bool {
	if p == nil || action < Subscribe || action > Declare {
		return false
	}
	switch d.Kind {
	case KindEdgeRefresh:
		return action == Send
	case KindTempQueue:
		return action == Send || action == Subscribe
	case 0:
		return false
	}
	req := d.Segments()
	for i := range p.grants[action] {
		if p.grants[action][i].covers(&d, req) {
			return true
		}
	}
	return false
}

// checkSubject refuses subjects that cannot be carried safely in a STOMP
// header or a destination: empty, over 1 KiB, invalid UTF-8 or with control
// characters. Every other character works (SPEC §5).
func checkSubject(sub string) error {
	switch {
	case sub == "":
		return fmt.Errorf("%w: sub claim missing", ErrInvalidToken)
	case len(sub) > MaxSubjectBytes:
		return fmt.Errorf("%w: sub longer than %d bytes", ErrInvalidToken, MaxSubjectBytes)
	}
	if why := textProblem(sub); why != "" {
		return fmt.Errorf("%w: sub: %s", ErrInvalidToken, why)
	}
	return nil
}

// MaxSubjectBytes caps the sub claim (a /user/<S>/queue/<name> destination
// must still fit in MaxDestinationBytes).
const MaxSubjectBytes = 256

func truncateString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
