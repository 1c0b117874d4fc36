package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var (
	testSecret = []byte("0123456789abcdef0123456789abcdef")
	testNow    = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	fixedNow   = func() time.Time { return testNow }
)

type testKeys struct {
	rsa     *rsa.PrivateKey
	rsa2    *rsa.PrivateKey
	ec      *ecdsa.PrivateKey
	ed      ed25519.PrivateKey
	rsaPEM  []byte
	rsaFile string
	ecFile  string
	edFile  string
}

var (
	keysOnce sync.Once
	keys     testKeys
)

func getKeys(t *testing.T) testKeys {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		if keys.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if keys.rsa2, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if keys.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
		if _, keys.ed, err = ed25519.GenerateKey(rand.Reader); err != nil {
			panic(err)
		}
		keys.rsaPEM = pemOf(keys.rsa.Public())
	})
	k := keys
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	k.rsaFile = write("rsa.pem", k.rsaPEM)
	k.ecFile = write("ec.pem", pemOf(k.ec.Public()))
	k.edFile = write("ed.pem", pemOf(k.ed.Public()))
	return k
}

func pemOf(pub crypto.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func claims(mod func(jwt.MapClaims)) jwt.MapClaims {
	c := jwt.MapClaims{
		"sub":   "alice",
		"jti":   "t-1",
		"exp":   testNow.Add(time.Hour).Unix(),
		"iat":   testNow.Unix(),
		"scope": "send:/topic/a subscribe:/topic/#",
	}
	if mod != nil {
		mod(c)
	}
	return c
}

func sign(t *testing.T, m jwt.SigningMethod, key any, c jwt.MapClaims, hdr map[string]any) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, c)
	for k, v := range hdr {
		tok.Header[k] = v
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func hsVerifier(t *testing.T, mod func(*VerifierConfig)) *Verifier {
	t.Helper()
	cfg := VerifierConfig{HS256Secret: testSecret, Leeway: 5 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	v, err := NewVerifier(cfg, fixedNow)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return v
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func TestVerifyHS256(t *testing.T) {
	v := hsVerifier(t, nil)
	vIssAud := hsVerifier(t, func(c *VerifierConfig) { c.Issuer, c.Audience = "https://idp", "stompgate" })
	hs := func(mod func(jwt.MapClaims)) string {
		return sign(t, jwt.SigningMethodHS256, testSecret, claims(mod), nil)
	}
	good := hs(nil)
	parts := strings.Split(good, ".")

	tests := []struct {
		name  string
		v     *Verifier
		token string
		want  error // nil = valid
	}{
		{"valid", v, good, nil},
		{"empty", v, "", ErrNoToken},
		{"oversized", v, good + "." + strings.Repeat("A", MaxTokenBytes), ErrInvalidToken},
		{"garbage", v, "not-a-jwt", ErrInvalidToken},
		{"two parts", v, parts[0] + "." + parts[1], ErrInvalidToken},
		{"malformed base64 payload", v, parts[0] + ".%%%." + parts[2], ErrInvalidToken},
		{"malformed base64 signature", v, parts[0] + "." + parts[1] + ".*" + parts[2], ErrInvalidToken},
		{"tampered payload", v, parts[0] + "." + b64([]byte(`{"sub":"root","exp":9999999999}`)) + "." + parts[2], ErrInvalidToken},
		{"wrong secret", v, sign(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-xx"), claims(nil), nil), ErrInvalidToken},
		{"HS512 not allowed", v, sign(t, jwt.SigningMethodHS512, testSecret, claims(nil), nil), ErrInvalidToken},
		{"alg none", v, sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims(nil), nil), ErrInvalidToken},
		{"alg none hand-made", v, b64([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + ".", ErrInvalidToken},
		{"alg None", v, b64([]byte(`{"alg":"None","typ":"JWT"}`)) + "." + parts[1] + ".", ErrInvalidToken},
		{"expired", v, hs(func(c jwt.MapClaims) { c["exp"] = testNow.Add(-time.Minute).Unix() }), ErrTokenExpired},
		{"expired within leeway", v, hs(func(c jwt.MapClaims) { c["exp"] = testNow.Add(-3 * time.Second).Unix() }), nil},
		{"no exp", v, hs(func(c jwt.MapClaims) { delete(c, "exp") }), ErrInvalidToken},
		{"exp not a number", v, hs(func(c jwt.MapClaims) { c["exp"] = "tomorrow" }), ErrInvalidToken},
		{"not yet valid", v, hs(func(c jwt.MapClaims) { c["nbf"] = testNow.Add(time.Minute).Unix() }), ErrInvalidToken},
		{"nbf within leeway", v, hs(func(c jwt.MapClaims) { c["nbf"] = testNow.Add(3 * time.Second).Unix() }), nil},
		{"no sub", v, hs(func(c jwt.MapClaims) { delete(c, "sub") }), ErrInvalidToken},
		{"empty sub", v, hs(func(c jwt.MapClaims) { c["sub"] = "" }), ErrInvalidToken},
		{"sub with newline", v, hs(func(c jwt.MapClaims) { c["sub"] = "alice\nx-user-id:root" }), ErrInvalidToken},
		{"sub with NUL", v, hs(func(c jwt.MapClaims) { c["sub"] = "alice\x00" }), ErrInvalidToken},
		{"sub too long", v, hs(func(c jwt.MapClaims) { c["sub"] = strings.Repeat("a", MaxSubjectBytes+1) }), ErrInvalidToken},
		{"sub not a string", v, hs(func(c jwt.MapClaims) { c["sub"] = 42 }), ErrInvalidToken},
		{"crit header", v, sign(t, jwt.SigningMethodHS256, testSecret, claims(nil), map[string]any{"crit": []string{"exp"}}), ErrInvalidToken},
		{"scope not a string", v, hs(func(c jwt.MapClaims) { c["scope"] = 7 }), ErrInvalidToken},

		{"iss and aud", vIssAud, hs(func(c jwt.MapClaims) { c["iss"], c["aud"] = "https://idp", "stompgate" }), nil},
		{"aud in an array", vIssAud, hs(func(c jwt.MapClaims) { c["iss"], c["aud"] = "https://idp", []string{"other", "stompgate"} }), nil},
		{"wrong iss", vIssAud, hs(func(c jwt.MapClaims) { c["iss"], c["aud"] = "https://evil", "stompgate" }), ErrInvalidToken},
		{"no iss", vIssAud, hs(func(c jwt.MapClaims) { c["aud"] = "stompgate" }), ErrInvalidToken},
		{"wrong aud", vIssAud, hs(func(c jwt.MapClaims) { c["iss"], c["aud"] = "https://idp", "other" }), ErrInvalidToken},
		{"no aud", vIssAud, hs(func(c jwt.MapClaims) { c["iss"] = "https://idp" }), ErrInvalidToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := tt.v.Verify(tt.token)
			if tt.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if id.Subject != "alice" || id.TokenID != "t-1" || id.Expiry.IsZero() {
					t.Fatalf("identity %+v", id)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if tt.want == ErrInvalidToken && errors.Is(err, ErrTokenExpired) {
				t.Fatal("reported as expired")
			}
		})
	}
}

func TestVerifyScopes(t *testing.T) {
	v := hsVerifier(t, nil)
	for name, set := range map[string]func(jwt.MapClaims){
		"scope string": func(c jwt.MapClaims) { c["scope"] = "send:/topic/a  subscribe:/topic/#" },
		"scope array":  func(c jwt.MapClaims) { c["scope"] = []string{"send:/topic/a", "subscribe:/topic/#"} },
		"scp array":    func(c jwt.MapClaims) { delete(c, "scope"); c["scp"] = []string{"send:/topic/a", "subscribe:/topic/#"} },
		"scp string":   func(c jwt.MapClaims) { delete(c, "scope"); c["scp"] = "send:/topic/a subscribe:/topic/#" },
		"both":         func(c jwt.MapClaims) { c["scope"] = "send:/topic/a"; c["scp"] = []string{"subscribe:/topic/#"} },
	} {
		t.Run(name, func(t *testing.T) {
			id, err := v.Verify(sign(t, jwt.SigningMethodHS256, testSecret, claims(set), nil))
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(id.Scopes, " ") != "send:/topic/a subscribe:/topic/#" {
				t.Fatalf("scopes %q", id.Scopes)
			}
		})
	}
}

func TestVerifyPublicKeys(t *testing.T) {
	k := getKeys(t)
	newV := func(files ...string) *Verifier {
		v, err := NewVerifier(VerifierConfig{PublicKeyFiles: files}, fixedNow)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	rsaV, ecV, edV, allV := newV(k.rsaFile), newV(k.ecFile), newV(k.edFile), newV(k.rsaFile, k.ecFile, k.edFile)
	c := claims(nil)
	tests := []struct {
		name  string
		v     *Verifier
		token string
		ok    bool
	}{
		{"RS256", rsaV, sign(t, jwt.SigningMethodRS256, k.rsa, c, nil), true},
		{"PS256", rsaV, sign(t, jwt.SigningMethodPS256, k.rsa, c, nil), true},
		{"ES256", ecV, sign(t, jwt.SigningMethodES256, k.ec, c, nil), true},
		{"EdDSA", edV, sign(t, jwt.SigningMethodEdDSA, k.ed, c, nil), true},
		{"all keys RS256", allV, sign(t, jwt.SigningMethodRS256, k.rsa, c, nil), true},
		{"all keys EdDSA", allV, sign(t, jwt.SigningMethodEdDSA, k.ed, c, nil), true},
		{"RS512 not allowed", rsaV, sign(t, jwt.SigningMethodRS512, k.rsa, c, nil), false},
		{"other RSA key", rsaV, sign(t, jwt.SigningMethodRS256, k.rsa2, c, nil), false},
		{"ES256 on an RSA verifier", rsaV, sign(t, jwt.SigningMethodES256, k.ec, c, nil), false},
		{"EdDSA on an EC verifier", ecV, sign(t, jwt.SigningMethodEdDSA, k.ed, c, nil), false},
		// Algorithm confusion: HS256 keyed with the public key's PEM bytes.
		{"HS256 with the RSA public key as secret", rsaV, sign(t, jwt.SigningMethodHS256, k.rsaPEM, c, nil), false},
		{"HS256 with the public PEM, all keys", allV, sign(t, jwt.SigningMethodHS256, k.rsaPEM, c, nil), false},
		{"HS256 with the DER bytes", rsaV, sign(t, jwt.SigningMethodHS256, x509.MarshalPKCS1PublicKey(&k.rsa.PublicKey), c, nil), false},
		{"alg none", rsaV, sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, c, nil), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.v.Verify(tt.token)
			if tt.ok != (err == nil) {
				t.Fatalf("ok=%v, err=%v", tt.ok, err)
			}
			if err != nil && !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("%v is not ErrInvalidToken", err)
			}
		})
	}
}

func TestNewVerifierConfig(t *testing.T) {
	k := getKeys(t)
	bad := map[string]VerifierConfig{
		"none":            {},
		"secret and keys": {HS256Secret: testSecret, PublicKeyFiles: []string{k.rsaFile}},
		"secret and jwks": {HS256Secret: testSecret, JWKSURL: "http://127.0.0.1:1/jwks"},
		"short secret":    {HS256Secret: []byte("short")},
		"missing file":    {PublicKeyFiles: []string{"/nonexistent.pem"}},
		"not PEM":         {PublicKeyFiles: []string{k.rsaFile + ".nope"}},
		"bad JWKS URL":    {JWKSURL: "::not a url"},
	}
	os.WriteFile(k.rsaFile+".nope", []byte("hello"), 0o600)
	for name, cfg := range bad {
		if v, err := NewVerifier(cfg, fixedNow); err == nil {
			v.Close()
			t.Errorf("%s: accepted", name)
		}
	}
}

// jwksServer serves a JWK Set that tests can change; it counts fetches.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	keys    []map[string]any
	fetches atomic.Int32
}

func newJWKSServer(t *testing.T, keys ...map[string]any) *jwksServer {
	s := &jwksServer{keys: keys}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		defer s.mu.Unlock()
		json.NewEncoder(w).Encode(map[string]any{"keys": s.keys})
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) add(k map[string]any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys = append(s.keys, k)
}

func rsaJWK(kid string, k *rsa.PublicKey) map[string]any {
	return map[string]any{"kty": "RSA", "kid": kid, "use": "sig", "n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())}
}

func ecJWK(kid string, k *ecdsa.PublicKey) map[string]any {
	e, err := k.ECDH()
	if err != nil {
		panic(err)
	}
	pt := e.Bytes() // 0x04 || X || Y
	return map[string]any{"kty": "EC", "kid": kid, "crv": "P-256", "x": b64(pt[1:33]), "y": b64(pt[33:])}
}

func edJWK(kid string, k ed25519.PublicKey) map[string]any {
	return map[string]any{"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(k)}
}

func TestVerifyJWKS(t *testing.T) {
	k := getKeys(t)
	srv := newJWKSServer(t,
		rsaJWK("rsa-1", &k.rsa.PublicKey),
		ecJWK("ec-1", &k.ec.PublicKey),
		edJWK("ed-1", k.ed.Public().(ed25519.PublicKey)),
		map[string]any{"kty": "oct", "kid": "sym", "k": b64(testSecret)},
		map[string]any{"kty": "RSA", "kid": "enc-1", "use": "enc", "n": b64(k.rsa2.N.Bytes()), "e": "AQAB"},
	)
	v, err := NewVerifier(VerifierConfig{
		JWKSURL:                srv.URL,
		JWKSClient:             srv.Client(),
		JWKSFetchTimeout:       2 * time.Second,
		JWKSUnknownKIDInterval: time.Hour, // one refetch for an unknown kid, then none
	}, fixedNow)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	c := claims(nil)
	kid := func(id string) map[string]any { return map[string]any{"kid": id} }
	tests := []struct {
		name  string
		token string
		ok    bool
	}{
		{"RS256 by kid", sign(t, jwt.SigningMethodRS256, k.rsa, c, kid("rsa-1")), true},
		{"PS256 by kid", sign(t, jwt.SigningMethodPS256, k.rsa, c, kid("rsa-1")), true},
		{"ES256 by kid", sign(t, jwt.SigningMethodES256, k.ec, c, kid("ec-1")), true},
		{"EdDSA by kid", sign(t, jwt.SigningMethodEdDSA, k.ed, c, kid("ed-1")), true},
		{"no kid", sign(t, jwt.SigningMethodRS256, k.rsa, c, nil), false},
		{"kid of another key type", sign(t, jwt.SigningMethodRS256, k.rsa, c, kid("ec-1")), false},
		{"signed by another key", sign(t, jwt.SigningMethodRS256, k.rsa2, c, kid("rsa-1")), false},
		{"HS256 with the oct key", sign(t, jwt.SigningMethodHS256, testSecret, c, kid("sym")), false},
		{"HS256 keyed with RSA PEM", sign(t, jwt.SigningMethodHS256, k.rsaPEM, c, kid("rsa-1")), false},
		{"encryption key", sign(t, jwt.SigningMethodRS256, k.rsa2, c, kid("enc-1")), false},
		{"alg none", sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, c, kid("rsa-1")), false},
		{"expired", sign(t, jwt.SigningMethodRS256, k.rsa, claims(func(c jwt.MapClaims) { c["exp"] = testNow.Add(-time.Hour).Unix() }), kid("rsa-1")), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := v.Verify(tt.token)
			t.Log(err)
			if tt.ok != (err == nil) {
				t.Fatalf("ok=%v, err=%v", tt.ok, err)
			}
		})
	}

	// Unknown kid: one refetch (rate-limited), then refused without
	// waiting; a key added since is found by that refetch.
	srv.add(rsaJWK("rsa-2", &k.rsa2.PublicKey))
	before := srv.fetches.Load()
	if _, err := v.Verify(sign(t, jwt.SigningMethodRS256, k.rsa2, c, kid("rsa-2"))); err != nil {
		t.Fatalf("rotated key: %v", err)
	}
	if got := srv.fetches.Load() - before; got != 1 {
		t.Fatalf("%d fetches for an unknown kid", got)
	}
	start := time.Now()
	for i := range 20 {
		if _, err := v.Verify(sign(t, jwt.SigningMethodRS256, k.rsa, c, kid("nope-"+string(rune('a'+i))))); !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("unknown kid: %v", err)
		}
	}
	if got := srv.fetches.Load() - before; got != 1 {
		t.Fatalf("unknown kids caused %d fetches", got)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("unknown kids waited %s", d)
	}
}

func TestVerifyJWKSUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	k := getKeys(t)
	v, err := NewVerifier(VerifierConfig{JWKSURL: srv.URL, JWKSClient: srv.Client(), JWKSFetchTimeout: time.Second}, fixedNow)
	if err != nil {
		t.Fatal(err) // starts anyway; tokens are refused
	}
	defer v.Close()
	if _, err := v.Verify(sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), map[string]any{"kid": "rsa-1"})); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("got %v", err)
	}
}
