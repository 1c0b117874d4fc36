package config

import (
	"crypto/tls"
	"errors"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

// Edge is the configuration of cmd/edge. Every field is an environment
// variable (SPEC §4 "Configuration"); the README table lists them all.
type Edge struct {
	Listen string // EDGE_LISTEN, default ":8080"
	// TLSCert and TLSKey are EDGE_TLS_CERT and EDGE_TLS_KEY: PEM files of
	// the certificate (chain) and its private key. Both or neither; when
	// set, the edge serves https and wss on EDGE_LISTEN.
	TLSCert string
	TLSKey  string

	AllowedOrigins     []string // EDGE_ALLOWED_ORIGINS, comma list, default "http://localhost:*,http://127.0.0.1:*"
	AllowMissingOrigin bool     // EDGE_ALLOW_MISSING_ORIGIN, default true
	TokenCookie        string   // EDGE_TOKEN_COOKIE, default "access_token"

	JWTSecret     string        // EDGE_JWT_HS256_SECRET (at least 32 bytes)
	JWTPublicKeys []string      // EDGE_JWT_PUBLIC_KEYS, comma list of PEM files
	JWKSURL       string        // EDGE_JWT_JWKS_URL, keys by kid, refreshed
	JWTIssuer     string        // EDGE_JWT_ISSUER, checked when set
	JWTAudience   string        // EDGE_JWT_AUDIENCE, checked when set
	JWTLeeway     time.Duration // EDGE_JWT_LEEWAY, default 5s

	BrokerAddrs     []string      // EDGE_BROKER_ADDRS, default "127.0.0.1:61613"
	BrokerLogin     string        // EDGE_BROKER_LOGIN, default "stompgate-edge"
	BrokerPasscode  string        // EDGE_BROKER_PASSCODE, default "stompgate-edge"
	BrokerVhost     string        // EDGE_BROKER_VHOST, default "stompgate"
	BrokerHeartbeat time.Duration // EDGE_BROKER_HEARTBEAT, default 10s (edge↔broker leg)
	BrokerTimeout   time.Duration // EDGE_BROKER_TIMEOUT, default 5s (dial + CONNECTED)
	// BrokerMaxFrameBytes is EDGE_BROKER_MAX_FRAME_BYTES, default 16 MiB:
	// the largest frame the edge takes from the broker. A larger message
	// ends only the session it was for (frame_too_large).
	BrokerMaxFrameBytes int

	// BrokerMode is EDGE_BROKER_MODE: "shared" (default; SPEC §4 "Shared
	// broker links": sessions ride EDGE_BROKER_LINKS AMQP connections and
	// get a dedicated STOMP connection only when a frame needs one) or
	// "dedicated" (one STOMP connection per session, as before).
	BrokerMode string
	// BrokerLinks is EDGE_BROKER_LINKS, default 2 (1..64): shared AMQP
	// connections per edge.
	BrokerLinks int
	// MaxDedicated is EDGE_MAX_DEDICATED, default 500 (a stock RabbitMQ
	// has 832 sockets): dedicated per-session broker connections of the
	// edge in shared mode; past it the frame that needs one gets ERROR
	// broker_busy. 0 allows none.
	MaxDedicated int
	// BrokerAMQPURLs is EDGE_BROKER_AMQP_URLS, comma list of amqp:// or
	// amqps:// URLs for the shared links. Default: one per
	// EDGE_BROKER_ADDRS host, port 5672, with EDGE_BROKER_LOGIN,
	// EDGE_BROKER_PASSCODE and EDGE_BROKER_VHOST.
	BrokerAMQPURLs []string
	// BrokerLinger is EDGE_BROKER_LINGER, default 2s: how long a shared
	// broker queue outlives its last local subscriber (no churn on reload).
	BrokerLinger time.Duration

	Heartbeat      time.Duration // EDGE_HEARTBEAT, default 25s (offered to clients both ways)
	ConnectTimeout time.Duration // EDGE_CONNECT_TIMEOUT, default 10s (upgrade → CONNECT)

	MaxFrameBytes    int           // EDGE_MAX_FRAME_BYTES, default 64 KiB (headers + body)
	MaxHeaders       int           // EDGE_MAX_HEADERS, default 64
	MaxHeaderBytes   int           // EDGE_MAX_HEADER_BYTES, default 8 KiB per header line
	MaxSubscriptions int           // EDGE_MAX_SUBSCRIPTIONS, default 100 per session
	SendBufferBytes  int           // EDGE_SEND_BUFFER_BYTES, default 512 KiB per session
	SendTimeLimit    time.Duration // EDGE_SEND_TIME_LIMIT, default 20s

	MaxConnections     int  // EDGE_MAX_CONNECTIONS, default 10000
	AcceptRate         Rate // EDGE_ACCEPT_RATE, new connections/s, default 0 (unlimited)
	MaxSessionsPerUser int  // EDGE_MAX_SESSIONS_PER_USER, default 20

	TokenExpiryGrace time.Duration // EDGE_TOKEN_EXPIRY_GRACE, default 30s

	ACLFile     string        // EDGE_ACL_FILE, default rules for every user (optional)
	RateSession Rate          // EDGE_RATE_SESSION, messages/s per session, burst 2×, default 0 (unlimited)
	RateUser    Rate          // EDGE_RATE_USER, messages/s per subject across its sessions, default 0 (unlimited)
	RateMaxWait time.Duration // EDGE_RATE_MAX_WAIT, default 2s: longer waits close with rate_limited

	DrainDelay  time.Duration // EDGE_DRAIN_DELAY, default 5s
	DrainPeriod time.Duration // EDGE_DRAIN_PERIOD, default 30s

	DatabaseURL string // EDGE_DATABASE_URL, optional
	// ResumeMax is EDGE_RESUME_MAX, default 1000: the most journal messages
	// an x-resume-after SUBSCRIBE replays; beyond, x-resume:gap.
	ResumeMax int

	// SchedPolicy is EDGE_SCHED_POLICY: "batch" (default, SCHED_BATCH: a
	// woken edge thread does not preempt a running task, so frames relay in
	// batches when the machine is busy) or "other" (the kernel default).
	SchedPolicy string

	LogFrames bool   // EDGE_LOG_FRAMES, default false
	LogFormat string // LOG_FORMAT: "text" (default) or "json"
	LogLevel  string // LOG_LEVEL: debug, info (default), warn, error
}

// LoadEdge reads and validates the edge configuration. All problems are
// reported together, each naming its variable.
func LoadEdge(getenv Getenv) (Edge, error) {
	e := &env{get: getenv}
	c := Edge{
		Listen:              e.String("EDGE_LISTEN", ":8080"),
		TLSCert:             e.String("EDGE_TLS_CERT", ""),
		TLSKey:              e.String("EDGE_TLS_KEY", ""),
		AllowedOrigins:      e.List("EDGE_ALLOWED_ORIGINS", "http://localhost:*,http://127.0.0.1:*"),
		AllowMissingOrigin:  e.Bool("EDGE_ALLOW_MISSING_ORIGIN", true),
		TokenCookie:         e.String("EDGE_TOKEN_COOKIE", "access_token"),
		JWTSecret:           e.String("EDGE_JWT_HS256_SECRET", ""),
		JWTPublicKeys:       e.List("EDGE_JWT_PUBLIC_KEYS", ""),
		JWKSURL:             e.String("EDGE_JWT_JWKS_URL", ""),
		JWTIssuer:           e.String("EDGE_JWT_ISSUER", ""),
		JWTAudience:         e.String("EDGE_JWT_AUDIENCE", ""),
		JWTLeeway:           e.Duration("EDGE_JWT_LEEWAY", 5*time.Second, 0),
		BrokerAddrs:         e.List("EDGE_BROKER_ADDRS", "127.0.0.1:61613"),
		BrokerLogin:         e.String("EDGE_BROKER_LOGIN", "stompgate-edge"),
		BrokerPasscode:      e.String("EDGE_BROKER_PASSCODE", "stompgate-edge"),
		BrokerVhost:         e.String("EDGE_BROKER_VHOST", "stompgate"),
		BrokerHeartbeat:     e.Duration("EDGE_BROKER_HEARTBEAT", 10*time.Second, 0),
		BrokerTimeout:       e.Duration("EDGE_BROKER_TIMEOUT", 5*time.Second, 10*time.Millisecond),
		BrokerMaxFrameBytes: e.Bytes("EDGE_BROKER_MAX_FRAME_BYTES", 16<<20, 4096),
		BrokerMode:          strings.ToLower(e.String("EDGE_BROKER_MODE", "shared")),
		BrokerLinks:         e.Int("EDGE_BROKER_LINKS", 2, 1),
		MaxDedicated:        e.Int("EDGE_MAX_DEDICATED", 500, 0),
		BrokerAMQPURLs:      e.List("EDGE_BROKER_AMQP_URLS", ""),
		BrokerLinger:        e.Duration("EDGE_BROKER_LINGER", 2*time.Second, 0),
		Heartbeat:           e.Duration("EDGE_HEARTBEAT", 25*time.Second, 0),
		ConnectTimeout:      e.Duration("EDGE_CONNECT_TIMEOUT", 10*time.Second, 10*time.Millisecond),
		MaxFrameBytes:       e.Bytes("EDGE_MAX_FRAME_BYTES", 64<<10, 1024),
		MaxHeaders:          e.Int("EDGE_MAX_HEADERS", 64, 4),
		MaxHeaderBytes:      e.Bytes("EDGE_MAX_HEADER_BYTES", 8<<10, 256),
		MaxSubscriptions:    e.Int("EDGE_MAX_SUBSCRIPTIONS", 100, 1),
		SendBufferBytes:     e.Bytes("EDGE_SEND_BUFFER_BYTES", 512<<10, 1024),
		SendTimeLimit:       e.Duration("EDGE_SEND_TIME_LIMIT", 20*time.Second, 10*time.Millisecond),
		MaxConnections:      e.Int("EDGE_MAX_CONNECTIONS", 10000, 1),
		AcceptRate:          e.Rate("EDGE_ACCEPT_RATE", 0),
		MaxSessionsPerUser:  e.Int("EDGE_MAX_SESSIONS_PER_USER", 20, 1),
		TokenExpiryGrace:    e.Duration("EDGE_TOKEN_EXPIRY_GRACE", 30*time.Second, 0),
		ACLFile:             e.String("EDGE_ACL_FILE", ""),
		RateSession:         e.Rate("EDGE_RATE_SESSION", 0),
		RateUser:            e.Rate("EDGE_RATE_USER", 0),
		RateMaxWait:         e.Duration("EDGE_RATE_MAX_WAIT", 2*time.Second, 0),
		DrainDelay:          e.Duration("EDGE_DRAIN_DELAY", 5*time.Second, 0),
		DrainPeriod:         e.Duration("EDGE_DRAIN_PERIOD", 30*time.Second, 0),
		DatabaseURL:         e.String("EDGE_DATABASE_URL", ""),
		ResumeMax:           e.Int("EDGE_RESUME_MAX", 1000, 1),
		SchedPolicy:         e.SchedPolicy("EDGE_SCHED_POLICY"),
		LogFrames:           e.Bool("EDGE_LOG_FRAMES", false),
		LogFormat:           e.String("LOG_FORMAT", "text"),
		LogLevel:            e.String("LOG_LEVEL", "info"),
	}
	for _, o := range c.AllowedOrigins {
		if o == "*" {
			e.fail("EDGE_ALLOWED_ORIGINS", `a bare "*" would let every website open sessions with your users' cookies; list origins explicitly`)
		}
	}
	sources := 0
	for _, set := range []bool{c.JWTSecret != "", len(c.JWTPublicKeys) > 0, c.JWKSURL != ""} {
		if set {
			sources++
		}
	}
	switch {
	case sources == 0:
		e.fail("EDGE_JWT_HS256_SECRET", "no JWT key configured: set one of EDGE_JWT_HS256_SECRET, EDGE_JWT_PUBLIC_KEYS or EDGE_JWT_JWKS_URL")
	case sources > 1:
		e.fail("EDGE_JWT_PUBLIC_KEYS", "set only one of EDGE_JWT_HS256_SECRET, EDGE_JWT_PUBLIC_KEYS and EDGE_JWT_JWKS_URL")
	case c.JWTSecret != "" && len(c.JWTSecret) < 32:
		e.fail("EDGE_JWT_HS256_SECRET", "shorter than 32 bytes; HS256 secrets that short can be brute-forced")
	case c.JWKSURL != "" && !strings.HasPrefix(c.JWKSURL, "https://") && !strings.HasPrefix(c.JWKSURL, "http://127.0.0.1") && !strings.HasPrefix(c.JWKSURL, "http://localhost"):
		e.fail("EDGE_JWT_JWKS_URL", "must be https:// (plain http only for localhost)")
	}
	if len(c.BrokerAddrs) == 0 {
		e.fail("EDGE_BROKER_ADDRS", "empty")
	}
	for _, a := range c.BrokerAddrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			e.fail("EDGE_BROKER_ADDRS", "%q is not host:port", a)
		}
	}
	if !oneOf(c.BrokerMode, "shared", "dedicated") {
		e.fail("EDGE_BROKER_MODE", "%q is neither shared nor dedicated", c.BrokerMode)
	}
	if c.BrokerLinks > 64 {
		e.fail("EDGE_BROKER_LINKS", "%d is above the maximum 64 (a few links carry every session)", c.BrokerLinks)
	}
	for _, u := range c.BrokerAMQPURLs {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "amqp" && p.Scheme != "amqps") || p.Host == "" {
			e.fail("EDGE_BROKER_AMQP_URLS", "%q is not an amqp:// or amqps:// URL", redactURL(u))
		}
	}
	if len(c.BrokerAMQPURLs) == 0 {
		c.BrokerAMQPURLs = amqpURLs(c.BrokerAddrs, c.BrokerLogin, c.BrokerPasscode, c.BrokerVhost)
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		e.fail("EDGE_LISTEN", "%q is not [host]:port", c.Listen)
	}
	checkTLS(e, c.TLSCert, c.TLSKey)
	if c.MaxHeaderBytes > c.MaxFrameBytes {
		e.fail("EDGE_MAX_HEADER_BYTES", "larger than EDGE_MAX_FRAME_BYTES")
	}
	if c.SendBufferBytes < c.MaxFrameBytes {
		e.fail("EDGE_SEND_BUFFER_BYTES", "smaller than EDGE_MAX_FRAME_BYTES: a single frame could never be queued")
	}
	if !oneOf(c.LogFormat, "text", "json") {
		e.fail("LOG_FORMAT", "%q is not text or json", c.LogFormat)
	}
	if !oneOf(strings.ToLower(c.LogLevel), "debug", "info", "warn", "error") {
		e.fail("LOG_LEVEL", "%q is not debug, info, warn or error", c.LogLevel)
	}
	if err := e.err(); err != nil {
		return Edge{}, errors.Join(errors.New("invalid configuration"), err)
	}
	return c, nil
}

// amqpURLs derives the shared links' URLs from the STOMP addresses: the
// same hosts, AMQP's port 5672, the edge's credentials and vhost.
func amqpURLs(addrs []string, login, passcode, vhost string) []string {
	var out []string
	for _, a := range addrs {
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			continue
		}
		u := url.URL{Scheme: "amqp", User: url.UserPassword(login, passcode), Host: net.JoinHostPort(host, "5672"), Path: "/" + vhost, RawPath: "/" + url.PathEscape(vhost)}
		out = append(out, u.String())
	}
	return out
}

func oneOf(v string, options ...string) bool {
	for _, o := range options {
		if v == o {
			return true
		}
	}
	return false
}

// checkTLS validates EDGE_TLS_CERT and EDGE_TLS_KEY: both or neither, each
// readable, and a key that belongs to the certificate.
func checkTLS(e *env, certFile, keyFile string) {
	switch {
	case certFile == "" && keyFile == "":
		return
	case keyFile == "":
		e.fail("EDGE_TLS_KEY", "not set, but EDGE_TLS_CERT is: set both (or neither)")
		return
	case certFile == "":
		e.fail("EDGE_TLS_CERT", "not set, but EDGE_TLS_KEY is: set both (or neither)")
		return
	}
	certPEM, certErr := os.ReadFile(certFile)
	if certErr != nil {
		e.fail("EDGE_TLS_CERT", "%v", certErr)
	}
	keyPEM, keyErr := os.ReadFile(keyFile)
	if keyErr != nil {
		e.fail("EDGE_TLS_KEY", "%v", keyErr)
	}
	if certErr == nil && keyErr == nil {
		if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
			e.fail("EDGE_TLS_CERT", "with EDGE_TLS_KEY: %v", err)
		}
	}
}
