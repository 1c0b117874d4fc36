package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// MaxTokenBytes caps the size of a bearer token (SPEC §3).
const MaxTokenBytes = 8 << 10

// Sentinel errors callers branch on (mapped to ERROR x-error-code values).
var (
	ErrNoToken      = errors.New("no token")
	ErrInvalidToken = errors.New("invalid token")
	ErrTokenExpired = errors.New("token expired")
)

// Identity is what a verified token says about its bearer. It is a value:
// sessions replace it whole on refresh.
type Identity struct {
	Subject string
	TokenID string // jti, may be empty
	Expiry  time.Time
	Scopes  []string // scope (space-separated) or scp (array) entries
}

// Claims is the JWT claim set stompgate reads.
type Claims struct {
	jwt.RegisteredClaims
	Scope string   `json:"scope,omitempty"`
	Scp   []string `json:"scp,omitempty"`
}

// VerifierConfig selects the key material and claim checks.
type VerifierConfig struct {
	HS256Secret    []byte   // shared secret for HS256
	PublicKeyFiles []string // PEM files: RSA (RS256/PS256), EC P-256 (ES256), Ed25519 (EdDSA)
	Issuer         string   // required and checked when set
	Audience       string   // required and checked when set
	Leeway         time.Duration
}

// Verifier checks JWTs against an explicit algorithm allow-list derived from
// the configured key, so "alg":"none" and algorithm confusion (an HS256 token
// signed with a public key) are refused. Safe for concurrent use.
type Verifier struct {
	parser  *jwt.Parser
	keyfunc jwt.Keyfunc
	now     func() time.Time
}

// NewVerifier builds a Verifier; exactly one key source must be configured.
func NewVerifier(cfg VerifierConfig, now func() time.Time) (*Verifier, error) {
	var (
		methods []string
		keys    []crypto.PublicKey
	)
	switch {
	case len(cfg.HS256Secret) > 0 && len(cfg.PublicKeyFiles) > 0:
		return nil, errors.New("configure either an HS256 secret or public keys, not both")
	case len(cfg.HS256Secret) > 0:
		methods = []string{"HS256"}
	case len(cfg.PublicKeyFiles) > 0:
		for _, f := range cfg.PublicKeyFiles {
			k, err := loadPublicKey(f)
			if err != nil {
				return nil, err
			}
			keys = append(keys, k)
		}
		methods = methodsFor(keys)
	default:
		return nil, errors.New("no JWT key configured")
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(methods),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithTimeFunc(now),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v := &Verifier{parser: jwt.NewParser(opts...), now: now}
	if len(cfg.HS256Secret) > 0 {
		secret := cfg.HS256Secret
		v.keyfunc = func(*jwt.Token) (any, error) { return secret, nil }
	} else {
		v.keyfunc = func(t *jwt.Token) (any, error) { return keyFor(t, keys) }
	}
	return v, nil
}

// methodsFor derives the allow-list from the key types.
func methodsFor(keys []crypto.PublicKey) []string {
	set := map[string]bool{}
	for _, k := range keys {
		switch k.(type) {
		case *rsa.PublicKey:
			set["RS256"], set["PS256"] = true, true
		case *ecdsa.PublicKey:
			set["ES256"] = true
		case ed25519.PublicKey:
			set["EdDSA"] = true
		}
	}
	var out []string
	for m := range set {
		out = append(out, m)
	}
	return out
}

// keyFor returns the configured public key matching the token's algorithm
// family (and kid, when keys are named by file). With several keys of one
// family, a verification is tried by the parser against a jwt.VerificationKeySet.
func keyFor(t *jwt.Token, keys []crypto.PublicKey) (any, error) {
	var set jwt.VerificationKeySet
	for _, k := range keys {
		switch k.(type) {
		case *rsa.PublicKey:
			if strings.HasPrefix(t.Method.Alg(), "RS") || strings.HasPrefix(t.Method.Alg(), "PS") {
				set.Keys = append(set.Keys, k)
			}
		case *ecdsa.PublicKey:
			if strings.HasPrefix(t.Method.Alg(), "ES") {
				set.Keys = append(set.Keys, k)
			}
		case ed25519.PublicKey:
			if t.Method.Alg() == "EdDSA" {
				set.Keys = append(set.Keys, k)
			}
		}
	}
	if len(set.Keys) == 0 {
		return nil, fmt.Errorf("no key for algorithm %s", t.Method.Alg())
	}
	return set, nil
}

func loadPublicKey(path string) (crypto.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read public key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("public key %s: no PEM block", path)
	}
	switch blk.Type {
	case "PUBLIC KEY":
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("public key %s: %w", path, err)
		}
		return k, nil
	case "RSA PUBLIC KEY":
		k, err := x509.ParsePKCS1PublicKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("public key %s: %w", path, err)
		}
		return k, nil
	case "CERTIFICATE":
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("public key %s: %w", path, err)
		}
		return c.PublicKey, nil
	}
	return nil, fmt.Errorf("public key %s: unsupported PEM block %q", path, blk.Type)
}

// Verify checks a compact JWT and returns the identity it carries.
func (v *Verifier) Verify(token string) (Identity, error) {
	if token == "" {
		return Identity{}, ErrNoToken
	}
	if len(token) > MaxTokenBytes {
		return Identity{}, fmt.Errorf("%w: longer than %d bytes", ErrInvalidToken, MaxTokenBytes)
	}
	var c Claims
	if _, err := v.parser.ParseWithClaims(token, &c, v.keyfunc); err != nil {
		if errors.Is(err, jwt.ErrTokenExpired) {
			return Identity{}, fmt.Errorf("%w: %v", ErrTokenExpired, err)
		}
		return Identity{}, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	if c.Subject == "" {
		return Identity{}, fmt.Errorf("%w: sub claim missing", ErrInvalidToken)
	}
	id := Identity{Subject: c.Subject, TokenID: c.ID, Expiry: c.ExpiresAt.Time}
	id.Scopes = append(strings.Fields(c.Scope), c.Scp...)
	return id, nil
}
