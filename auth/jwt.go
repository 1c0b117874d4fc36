package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
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

// Claims is the JWT claim set stompgate reads. scope and scp are each
// accepted as a space-separated string or as an array of strings (issuers
// differ: Azure AD puts a string in scp, Okta an array).
type Claims struct {
	jwt.RegisteredClaims
	Scope ScopeList `json:"scope,omitempty"`
	Scp   ScopeList `json:"scp,omitempty"`
}

// ScopeList is a scope claim: a space-separated string or a string array.
type ScopeList []string

// UnmarshalJSON accepts "a b c" and ["a", "b c"] (array items are split on
// spaces too).
func (s *ScopeList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = strings.Fields(one)
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New("scope claim is neither a string nor an array of strings")
	}
	var out []string
	for _, m := range many {
		out = append(out, strings.Fields(m)...)
	}
	*s = out
	return nil
}

// VerifierConfig selects the key material and claim checks. Exactly one key
// source: HS256Secret, PublicKeyFiles or JWKSURL.
type VerifierConfig struct {
	HS256Secret    []byte   // shared secret for HS256, at least 32 bytes
	PublicKeyFiles []string // PEM files: RSA (RS256/PS256), EC P-256 (ES256), Ed25519 (EdDSA)
	JWKSURL        string   // JWK Set URL (EDGE_JWT_JWKS_URL): RS256/PS256/ES256/EdDSA keys looked up by kid
	Issuer         string   // required and checked when set
	Audience       string   // required and checked when set
	Leeway         time.Duration

	// JWKS only.
	JWKSRefreshInterval time.Duration // periodic refetch, default 15m
	JWKSFetchTimeout    time.Duration // bound of every fetch, default 5s
	// JWKSUnknownKIDInterval is the least time between refetches triggered
	// by a token whose kid is not in the set (key rotation), default 30s.
	// Tokens with unknown kids in between are refused at once, so random
	// kids cannot make the edge hammer the issuer or wait.
	JWKSUnknownKIDInterval time.Duration
	JWKSClient             *http.Client // default: a client with JWKSFetchTimeout, no redirects to other hosts
	Logger                 *slog.Logger // JWKS fetch errors; nil discards
}

// Verifier checks JWTs against an explicit algorithm allow-list derived from
// the configured key, so "alg":"none" and algorithm confusion (an HS256 token
// signed with a public key) are refused. Safe for concurrent use.
type Verifier struct {
	parser  *jwt.Parser
	keyfunc jwt.Keyfunc
	now     func() time.Time
	stop    context.CancelFunc // ends the JWKS refresh goroutine
}

// NewVerifier builds a Verifier; exactly one key source must be configured.
// With a JWKSURL it starts a refresh goroutine that runs until Close.
func NewVerifier(cfg VerifierConfig, now func() time.Time) (*Verifier, error) {
	return NewVerifierContext(context.Background(), cfg, now)
}

// NewVerifierContext is NewVerifier whose JWKS refresh goroutine also ends
// when ctx is done. The first JWKS fetch happens here, bounded by
// JWKSFetchTimeout; when it fails the Verifier is still returned (the
// issuer may be starting too): tokens are refused until a later fetch
// succeeds, and the failure is logged.
func NewVerifierContext(ctx context.Context, cfg VerifierConfig, now func() time.Time) (*Verifier, error) {
	if now == nil {
		now = time.Now
	}
	sources := 0
	for _, set := range []bool{len(cfg.HS256Secret) > 0, len(cfg.PublicKeyFiles) > 0, cfg.JWKSURL != ""} {
		if set {
			sources++
		}
	}
	if sources > 1 {
		return nil, errors.New("configure exactly one JWT key source: an HS256 secret, public keys or a JWKS URL")
	}
	var (
		methods []string
		keys    []crypto.PublicKey
	)
	switch {
	case len(cfg.HS256Secret) > 0:
		if len(cfg.HS256Secret) < 32 {
			return nil, errors.New("HS256 secret shorter than 32 bytes")
		}
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
		if len(methods) == 0 {
			return nil, errors.New("no supported public key (RSA, EC P-256, Ed25519)")
		}
	case cfg.JWKSURL != "":
		methods = []string{"RS256", "PS256", "ES256", "EdDSA"}
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
	v := &Verifier{parser: jwt.NewParser(opts...), now: now, stop: func() {}}
	switch {
	case len(cfg.HS256Secret) > 0:
		secret := bytes.Clone(cfg.HS256Secret)
		v.keyfunc = func(t *jwt.Token) (any, error) {
			if _, ok := t.Method.(*jwt.SigningMethodHMAC); !ok {
				return nil, fmt.Errorf("unexpected algorithm %s", t.Method.Alg())
			}
			return secret, nil
		}
	case len(keys) > 0:
		v.keyfunc = func(t *jwt.Token) (any, error) { return keyFor(t, keys) }
	default:
		kf, stop, err := newJWKS(ctx, cfg)
		if err != nil {
			return nil, err
		}
		v.keyfunc, v.stop = kf, stop
	}
	return v, nil
}

// Close stops the JWKS refresh goroutine, if any. Idempotent.
func (v *Verifier) Close() { v.stop() }

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

// checkedKeyfunc refuses what jwt/v5 lets through: a "crit" header (RFC
// 7515 §4.1.11: we understand no extension, so the token must be refused).
func (v *Verifier) checkedKeyfunc(t *jwt.Token) (any, error) {
	if _, ok := t.Header["crit"]; ok {
		return nil, errors.New(`unsupported "crit" header`)
	}
	return v.keyfunc(t)
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
	if _, err := v.parser.ParseWithClaims(token, &c, v.checkedKeyfunc); err != nil {
		if errors.Is(err, jwt.ErrTokenExpired) {
			return Identity{}, fmt.Errorf("%w: %v", ErrTokenExpired, err)
		}
		return Identity{}, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	if c.Subject == "" {
		return Identity{}, fmt.Errorf("%w: sub claim missing", ErrInvalidToken)
	}
	if err := checkSubject(c.Subject); err != nil {
		return Identity{}, err
	}
	id := Identity{Subject: c.Subject, TokenID: c.ID, Expiry: c.ExpiresAt.Time}
	id.Scopes = append(append([]string(nil), c.Scope...), c.Scp...)
	return id, nil
}
