package auth

import (
	"errors"
	"testing"
)

func TestOriginPolicy(t *testing.T) {
	p, err := NewOriginPolicy([]string{"https://app.example.com", "http://localhost:*", "https://*.example.org", "http://127.0.0.1:8080"}, true)
	if err != nil {
		t.Fatal(err)
	}
	strict, err := NewOriginPolicy([]string{"https://app.example.com"}, false)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		policy *OriginPolicy
		origin string
		want   OriginDecision
	}{
		{p, "https://app.example.com", OriginAllowed},
		{p, "https://app.example.com:443", OriginAllowed},
		{p, "https://APP.example.com", OriginAllowed},
		{p, "http://app.example.com", OriginRefused},       // scheme differs
		{p, "https://app.example.com:8443", OriginRefused}, // port differs
		{p, "https://app.example.com.evil.io", OriginRefused},
		{p, "https://evilapp.example.com", OriginRefused},
		{p, "http://localhost:3000", OriginAllowed},
		{p, "http://localhost", OriginAllowed},
		{p, "http://localhost.evil.io:3000", OriginRefused},
		{p, "https://a.example.org", OriginAllowed},
		{p, "https://a.b.example.org", OriginRefused}, // "*" is exactly one label
		{p, "https://example.org", OriginRefused},
		{p, "http://127.0.0.1:8080", OriginAllowed},
		{p, "http://127.0.0.1:8081", OriginRefused},
		{p, "null", OriginRefused},
		{p, "https://user@app.example.com", OriginRefused},
		{p, "https://app.example.com/path", OriginRefused},
		{p, "", OriginMissing},
		{strict, "", OriginRefused},
	}
	for _, tt := range tests {
		if got := tt.policy.Check(tt.origin); got != tt.want {
			t.Errorf("Check(%q) = %v, want %v", tt.origin, got, tt.want)
		}
	}
}

func TestOriginPolicyRefusesBadEntries(t *testing.T) {
	if _, err := NewOriginPolicy([]string{"https://a.example", "*"}, true); !errors.Is(err, ErrOriginWildcard) {
		t.Fatalf("bare * accepted: %v", err)
	}
	for _, bad := range []string{"app.example.com", "ftp://a.example", "https://*", "https://a.*.example", "https://a.example/path", "https://a.example:"} {
		if _, err := NewOriginPolicy([]string{bad}, true); err == nil {
			t.Errorf("entry %q accepted", bad)
		}
	}
}
