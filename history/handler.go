package history

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stompgate/stompgate/auth"
)

// DefaultLimit is the limit of a request that names none.
const DefaultLimit = 100

// queryTimeout bounds the database query of one request.
const queryTimeout = 10 * time.Second

// Config tunes the handler. Zero values take the defaults.
type Config struct {
	// Revoked, when set, refuses tokens whose subject or jti is revoked
	// (401, like an invalid token).
	Revoked func(auth.Identity) bool
	// Log receives query failures (500s); nil discards.
	Log *slog.Logger
}

// handler serves GET /api/history. Safe for concurrent use.
type handler struct {
	pool     *pgxpool.Pool
	verifier *auth.Verifier
	rules    *auth.Rules
	cfg      Config
}

// NewHandler returns the handler of GET /api/history (SPEC §6):
//
//	GET /api/history?destination=/topic/<key>&after_seq=N&limit=M
//	GET /api/history?destination=<dest>[&after_id=N|&before_id=N]&limit=M
//
// Authorization: Bearer <jwt>, verified by verifier; the caller needs
// subscribe permission (token scopes plus rules) on the destination, which
// is /topic/<key> (also /exchange/amq.topic/<key>) or /exchange/<name>/<key>.
// after_seq reads the journal of stream <key> by seq; after_id/before_id
// (or no cursor: the newest) read every row stored for the destination by
// id. limit is 1..1000, default 100. The answer is
//
//	{"messages":[{"id","seq","message_id","sender","content_type","headers","body","published_at"}]}
//
// oldest first; seq is null for archived messages; headers are the stored
// AMQP headers; body is a string for text content types (text/*, JSON,
// XML, JavaScript, form data) holding valid UTF-8, else base64 with
// "body_encoding":"base64". Errors: 400 for bad parameters, 401 without a
// valid token (WWW-Authenticate: Bearer), 403 without permission, each
// {"error": code, "message": text}.
func NewHandler(pool *pgxpool.Pool, verifier *auth.Verifier, rules *auth.Rules, cfg Config) http.Handler {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &handler{pool: pool, verifier: verifier, rules: rules, cfg: cfg}
}

// request is a validated history query.
type request struct {
	dest     auth.Destination
	exchange string // the exchange rows are stored under
	key      string
	afterSeq int64
	bySeq    bool
	cursor   Cursor
	limit    int
}

// parseRequest validates the query parameters; the error is the 400 text.
func parseRequest(q map[string][]string) (request, error) {
	get := func(k string) (string, bool, error) {
		v, ok := q[k]
		if !ok {
			return "", false, nil
		}
		if len(v) != 1 {
			return "", false, fmt.Errorf("%s given more than once", k)
		}
		return v[0], true, nil
	}
	num := func(k string, min int64) (int64, bool, error) {
		s, ok, err := get(k)
		if err != nil || !ok {
			return 0, ok, err
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < min {
			return 0, false, fmt.Errorf("%s must be an integer ≥ %d", k, min)
		}
		return n, true, nil
	}
	var r request
	ds, ok, err := get("destination")
	if err != nil {
		return r, err
	}
	if !ok || ds == "" {
		return r, errors.New("destination is required, e.g. destination=/topic/room.1")
	}
	if r.dest, err = auth.ParseDestination(ds); err != nil {
		return r, fmt.Errorf("destination: %v", err)
	}
	switch {
	case r.dest.Wildcard():
		return r, errors.New("destination must not contain wildcards")
	case r.dest.Kind == auth.KindTopic:
		r.exchange, r.key = auth.AMQPTopicExchange, r.dest.Name
	case r.dest.Kind == auth.KindExchange && r.dest.Name != "":
		r.exchange, r.key = r.dest.Exchange, r.dest.Name
	default:
		return r, errors.New("destination must be /topic/<key> or /exchange/<name>/<key>")
	}
	var has [3]bool
	if r.afterSeq, has[0], err = num("after_seq", 0); err != nil {
		return r, err
	}
	if r.cursor.After, has[1], err = num("after_id", 0); err != nil {
		return r, err
	}
	if r.cursor.Before, has[2], err = num("before_id", 1); err != nil {
		return r, err
	}
	n := 0
	for _, h := range has {
		if h {
			n++
		}
	}
	if n > 1 {
		return r, errors.New("give at most one of after_seq, after_id, before_id")
	}
	r.bySeq = has[0]
	if r.bySeq && r.exchange != auth.AMQPTopicExchange {
		return r, errors.New("after_seq needs a /topic/<key> destination (a journaled stream)")
	}
	limit, ok, err := num("limit", 1)
	if err != nil {
		return r, errors.New("limit must be an integer from 1 to 1000")
	}
	r.limit = DefaultLimit
	if ok {
		if limit > MaxLimit {
			return r, errors.New("limit must be an integer from 1 to 1000")
		}
		r.limit = int(limit)
	}
	return r, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="stompgate"`)
	}
	writeJSON(w, status, map[string]string{"error": code, "message": msg})
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "use GET")
		return
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || strings.TrimSpace(token) == "" {
		writeError(w, http.StatusUnauthorized, "unauthenticated", "Authorization: Bearer <jwt> is required")
		return
	}
	id, err := h.verifier.Verify(strings.TrimSpace(token))
	if err != nil {
		writeError(w, http.StatusUnauthorized, "unauthenticated", "invalid token")
		return
	}
	if h.cfg.Revoked != nil && h.cfg.Revoked(id) {
		writeError(w, http.StatusUnauthorized, "revoked", "token revoked")
		return
	}
	req, err := parseRequest(r.URL.Query())
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	perms, err := auth.NewPermissions(id, h.rules)
	if err != nil {
		writeError(w, http.StatusUnauthorized, "unauthenticated", "invalid token subject")
		return
	}
	if !perms.CanDestination(auth.Subscribe, req.dest) {
		writeError(w, http.StatusForbidden, "forbidden", "no subscribe permission on "+req.dest.Raw)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), queryTimeout)
	defer cancel()
	var msgs []Message
	if req.bySeq {
		msgs, err = Since(ctx, h.pool, req.key, req.afterSeq, req.limit)
	} else {
		msgs, err = ByID(ctx, h.pool, req.exchange, req.key, req.cursor, req.limit)
	}
	if err != nil {
		h.cfg.Log.Warn("history query failed", "destination", req.dest.Raw, "err", err)
		writeError(w, http.StatusInternalServerError, "internal", "history is unavailable")
		return
	}
	out := response{Messages: make([]jsonMessage, len(msgs))}
	for i := range msgs {
		out.Messages[i] = toJSON(&msgs[i])
	}
	writeJSON(w, http.StatusOK, out)
}

type response struct {
	Messages []jsonMessage `json:"messages"`
}

type jsonMessage struct {
	ID           int64           `json:"id"`
	Seq          *int64          `json:"seq"`
	MessageID    string          `json:"message_id"`
	Sender       string          `json:"sender"`
	ContentType  *string         `json:"content_type"`
	Headers      json.RawMessage `json:"headers"`
	Body         string          `json:"body"`
	BodyEncoding string          `json:"body_encoding,omitempty"`
	PublishedAt  time.Time       `json:"published_at"`
}

func toJSON(m *Message) jsonMessage {
	j := jsonMessage{ID: m.ID, MessageID: m.MessageID, Sender: m.Sender, PublishedAt: m.PublishedAt.UTC(),
		Headers: json.RawMessage(`{}`)}
	if m.Seq > 0 {
		j.Seq = &m.Seq
	}
	if m.ContentType != "" {
		j.ContentType = &m.ContentType
	}
	var doc struct {
		Headers json.RawMessage `json:"headers"`
	}
	if json.Unmarshal(m.Headers, &doc) == nil && len(doc.Headers) > 0 && doc.Headers[0] == '{' {
		j.Headers = doc.Headers
	}
	if IsText(m.ContentType) && utf8.Valid(m.Body) {
		j.Body = string(m.Body)
	} else {
		j.Body, j.BodyEncoding = base64.StdEncoding.EncodeToString(m.Body), "base64"
	}
	return j
}

// IsText reports whether a content type's bodies are sent as JSON strings
// (text/*, JSON, XML, JavaScript, form data); others are base64.
func IsText(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return false
	}
	switch {
	case strings.HasPrefix(mt, "text/"),
		mt == "application/json", strings.HasSuffix(mt, "+json"),
		mt == "application/xml", strings.HasSuffix(mt, "+xml"),
		mt == "application/javascript", mt == "application/x-www-form-urlencoded":
		return true
	}
	return false
}
