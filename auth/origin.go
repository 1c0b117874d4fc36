// Package auth holds the edge's security boundary (SPEC §3):
//
//   - OriginPolicy: which browser origins may open a WebSocket;
//   - UpgradeToken, ConnectToken: where a token may come from;
//   - Verifier: JWT verification (HS256 secret, PEM public keys or a JWKS
//     URL) with an algorithm allow-list derived from the key;
//   - ParseDestination: destination normalisation;
//   - Rules (EDGE_ACL_FILE) and Permissions: who may subscribe, send and
//     declare where, with the subset rule for wildcard subscriptions;
//   - CheckHeaders, StampIdentity: the header firewall and identity headers;
//   - RateLimits: per-session and per-subject token buckets.
//
// Revocation (stompgate_revocations, LISTEN, edgectl's statements) lives in
// package revocation.
//
// Everything here is safe for concurrent use unless its type says
// otherwise; nothing logs except through a logger passed in.
package auth

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// OriginPolicy decides which browser origins may open a WebSocket. It is
// immutable after construction and safe for concurrent use.
type OriginPolicy struct {
	patterns     []originPattern
	allowMissing bool
}

type originPattern struct {
	scheme   string
	host     string // exact host, or the part after "*." when wildHost
	wildHost bool   // "*.example.com": exactly one extra leftmost label
	port     string // "" = scheme default, "*" = any port
}

// ErrOriginWildcard is returned for a bare "*" entry, which would disable the
// check entirely.
var ErrOriginWildcard = errors.New(`a bare "*" would allow every site; list origins explicitly`)

// NewOriginPolicy parses allow-list entries: exact origins
// ("https://app.example.com") or patterns with "*" for the port
// ("http://localhost:*") or the leftmost host label ("https://*.example.com").
func NewOriginPolicy(entries []string, allowMissing bool) (*OriginPolicy, error) {
	p := &OriginPolicy{allowMissing: allowMissing}
	for _, e := range entries {
		if strings.TrimSpace(e) == "*" {
			return nil, ErrOriginWildcard
		}
		pat, err := parseOriginPattern(e)
		if err != nil {
			return nil, fmt.Errorf("origin %q: %w", e, err)
		}
		p.patterns = append(p.patterns, pat)
	}
	return p, nil
}

func parseOriginPattern(e string) (originPattern, error) {
	scheme, rest, ok := strings.Cut(e, "://")
	if !ok || (scheme != "http" && scheme != "https") {
		return originPattern{}, errors.New("must start with http:// or https://")
	}
	if strings.ContainsAny(rest, "/?#@") {
		return originPattern{}, errors.New("an origin has no path, query or user part")
	}
	host, port := rest, ""
	if i := strings.LastIndexByte(rest, ':'); i >= 0 && !strings.HasSuffix(rest, "]") {
		host, port = rest[:i], rest[i+1:]
		if port == "" {
			return originPattern{}, errors.New("empty port")
		}
	}
	pat := originPattern{scheme: scheme, host: strings.ToLower(host), port: port}
	if strings.HasPrefix(pat.host, "*.") {
		pat.wildHost, pat.host = true, pat.host[2:]
	}
	if pat.host == "" || strings.Contains(pat.host, "*") {
		return originPattern{}, errors.New(`"*" may only stand for the port or the leftmost host label`)
	}
	return pat, nil
}

// OriginDecision is the outcome of checking a request's Origin header.
type OriginDecision int

const (
	OriginAllowed OriginDecision = iota
	OriginMissing                // no Origin header, and missing origins are allowed
	OriginRefused
)

// Check classifies the value of an Origin header ("" when absent).
func (p *OriginPolicy) Check(origin string) OriginDecision {
	if origin == "" {
		if p.allowMissing {
			return OriginMissing
		}
		return OriginRefused
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" || u.Path != "" || u.User != nil {
		return OriginRefused
	}
	host, port := strings.ToLower(u.Hostname()), u.Port()
	for _, pat := range p.patterns {
		if pat.matches(u.Scheme, host, port) {
			return OriginAllowed
		}
	}
	return OriginRefused
}

func (pat originPattern) matches(scheme, host, port string) bool {
	if scheme != pat.scheme {
		return false
	}
	if pat.port != "*" && !samePort(scheme, pat.port, port) {
		return false
	}
	if !pat.wildHost {
		return host == pat.host
	}
	label, parent, ok := strings.Cut(host, ".")
	return ok && label != "" && parent == pat.host
}

func samePort(scheme, want, got string) bool {
	def := map[string]string{"http": "80", "https": "443"}[scheme]
	if want == "" {
		want = def
	}
	if got == "" {
		got = def
	}
	return want == got
}
