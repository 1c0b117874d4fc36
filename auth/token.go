package auth

import (
	"net/http"
	"strings"

	"github.com/go-stomp/stomp/v3/frame"
)

// TokenSource says where a session's token came from.
type TokenSource string

const (
	SourceHeader   TokenSource = "authorization-header"
	SourceQuery    TokenSource = "query"
	SourceCookie   TokenSource = "cookie"
	SourceConnect  TokenSource = "connect-frame"
	SourcePasscode TokenSource = "connect-passcode"
)

// UpgradeToken returns the token carried by the WebSocket upgrade request, in
// SPEC §3 precedence: Authorization: Bearer, then the access_token query
// parameter, then the named cookie.
func UpgradeToken(r *http.Request, cookieName string) (string, TokenSource) {
	if t, ok := bearer(r.Header.Get("Authorization")); ok {
		return t, SourceHeader
	}
	if t := r.URL.Query().Get("access_token"); t != "" {
		return t, SourceQuery
	}
	if cookieName != "" {
		if c, err := r.Cookie(cookieName); err == nil && c.Value != "" {
			return c.Value, SourceCookie
		}
	}
	return "", ""
}

// ConnectToken returns the token carried by a CONNECT/STOMP frame:
// "Authorization: Bearer <jwt>" or the passcode header.
func ConnectToken(h *frame.Header) (string, TokenSource) {
	if v, ok := h.Contains("Authorization"); ok {
		if t, ok := bearer(v); ok {
			return t, SourceConnect
		}
	}
	if v, ok := h.Contains("authorization"); ok {
		if t, ok := bearer(v); ok {
			return t, SourceConnect
		}
	}
	if v := h.Get(frame.Passcode); v != "" {
		return v, SourcePasscode
	}
	return "", ""
}

// bearer reads "Bearer <token>" (scheme case-insensitive). A header whose
// token is blank holds none: it must not hide a later source (found by
// FuzzUpgradeToken: "Bearer   " used to win over access_token and passcode
// with an empty token).
func bearer(v string) (string, bool) {
	const p = "bearer "
	if len(v) > len(p) && strings.EqualFold(v[:len(p)], p) {
		t := strings.TrimSpace(v[len(p):])
		return t, t != ""
	}
	return "", false
}
