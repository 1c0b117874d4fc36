package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

// maxJWKSBytes bounds a JWK Set response body.
const maxJWKSBytes = 1 << 20

// newJWKS builds the keyfunc of a JWKS key source (keyfunc/v3 over jwkset):
// keys cached in memory, refetched every JWKSRefreshInterval and, at most
// every JWKSUnknownKIDInterval, when a token names an unknown kid. Every
// fetch is bounded by JWKSFetchTimeout and the body by 1 MiB. The returned
// cancel ends the refresh goroutine.
func newJWKS(ctx context.Context, cfg VerifierConfig) (jwt.Keyfunc, context.CancelFunc, error) {
	timeout := cfg.JWKSFetchTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	refresh := cfg.JWKSRefreshInterval
	if refresh <= 0 {
		refresh = 15 * time.Minute
	}
	unknown := cfg.JWKSUnknownKIDInterval
	if unknown <= 0 {
		unknown = 30 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	client := cfg.JWKSClient
	if client == nil {
		client = &http.Client{Timeout: timeout}
	}
	c := *client
	base := c.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	c.Transport = limitedBody{base}

	ctx, cancel := context.WithCancel(ctx)
	kf, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{cfg.JWKSURL}, keyfunc.Override{
		Client:      &c,
		HTTPTimeout: timeout,
		// An unknown kid waits for the limiter at most this long; a wait
		// longer than the deadline fails at once (x/time/rate), so a flood
		// of random kids costs one fetch per interval and no waiting.
		RateLimitWaitMax:  timeout,
		RefreshInterval:   refresh,
		RefreshUnknownKID: rate.NewLimiter(rate.Every(unknown), 1),
		RefreshErrorHandlerFunc: func(u string) func(context.Context, error) {
			return func(_ context.Context, err error) {
				log.Warn("JWKS fetch failed", "url", u, "err", err)
			}
		},
	})
	if err != nil {
		cancel()
		return nil, nil, fmt.Errorf("JWKS %s: %w", cfg.JWKSURL, err)
	}
	// Only signature keys ("use" absent or "sig"), never "enc" ones.
	kf, err = keyfunc.New(keyfunc.Options{Ctx: ctx, Storage: kf.Storage(), UseWhitelist: []jwkset.USE{jwkset.UseSig, ""}})
	if err != nil {
		cancel()
		return nil, nil, err
	}
	lookup := func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		if kid == "" {
			return nil, errors.New("token has no kid; a JWKS key source needs one")
		}
		if len(kid) > 256 {
			return nil, errors.New("kid too long")
		}
		lctx, lcancel := context.WithTimeout(ctx, timeout)
		defer lcancel()
		key, err := kf.KeyfuncCtx(lctx)(t)
		if err != nil {
			return nil, err
		}
		if !keyFits(t.Method.Alg(), key) {
			return nil, fmt.Errorf("key %q does not fit algorithm %s", kid, t.Method.Alg())
		}
		return key, nil
	}
	return lookup, cancel, nil
}

// keyFits checks that a JWKS key is of the family the token's algorithm
// needs; a symmetric ("oct") key never is, so a JWK Set holding one cannot
// be turned into an HMAC secret.
func keyFits(alg string, key any) bool {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return alg == "RS256" || alg == "PS256"
	case *ecdsa.PublicKey:
		return alg == "ES256" && k.Curve == elliptic.P256()
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

// limitedBody caps response bodies so a hostile or broken JWKS endpoint
// cannot make the edge buffer without bound.
type limitedBody struct{ http.RoundTripper }

func (l limitedBody) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.RoundTripper.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.LimitReader(resp.Body, maxJWKSBytes), resp.Body}
	return resp, nil
}
