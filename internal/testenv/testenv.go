// Package testenv gives tests isolated pieces of the real local services:
// a fresh RabbitMQ vhost per test (management API), tokens, and polling.
// Nothing here mocks RabbitMQ or PostgreSQL.
package testenv

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/oklog/ulid/v2"
)

// Addresses of the local services (overridable for other machines).
var (
	MgmtURL   = envOr("TEST_RABBITMQ_MGMT", "http://127.0.0.1:15672")
	StompAddr = envOr("TEST_RABBITMQ_STOMP", "127.0.0.1:61613")
	AMQPHost  = envOr("TEST_RABBITMQ_AMQP", "127.0.0.1:5672")
)

// Secret is the HS256 secret tests configure edges with.
const Secret = "test-secret-test-secret-test-secret-0123"

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// mgmtClient keeps no idle connections, so goleak in the packages using it
// sees no leftover transport goroutines.
var mgmtClient = &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// Mgmt calls the RabbitMQ management API as guest; out may be nil.
func Mgmt(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, MgmtURL+path, rd)
	if err != nil {
		return err
	}
	req.SetBasicAuth("guest", "guest")
	req.Header.Set("Content-Type", "application/json")
	resp, err := mgmtClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// Integration marks t as an integration test: it needs the real local
// RabbitMQ or Postgres, so it is skipped under -short (make test-unit,
// which must pass with no network at all). Every helper here that reaches
// a service calls it.
func Integration(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test (needs RabbitMQ/Postgres): skipped with -short")
	}
}

// Vhost creates a RabbitMQ vhost for this test only (guest has full
// permissions on it) and deletes it when the test ends.
func Vhost(t testing.TB) string {
	t.Helper()
	Integration(t)
	name := "sgtest-" + strings.ToLower(ulid.Make().String())
	p := "/api/vhosts/" + url.PathEscape(name)
	if err := Mgmt("PUT", p, map[string]any{}, nil); err != nil {
		t.Fatalf("create vhost: %v", err)
	}
	perm := map[string]string{"configure": ".*", "write": ".*", "read": ".*"}
	if err := Mgmt("PUT", "/api/permissions/"+url.PathEscape(name)+"/guest", perm, nil); err != nil {
		t.Fatalf("vhost permissions: %v", err)
	}
	t.Cleanup(func() { _ = Mgmt("DELETE", p, nil, nil) })
	return name
}

// AMQPURL is the amqp091 URL of vhost as guest.
func AMQPURL(vhost string) string {
	return "amqp://guest:guest@" + AMQPHost + "/" + url.PathEscape(vhost)
}

// AllScopes grants what relay tests exercise: topics, queues, the temp and
// reply queues RabbitMQ hands out, and journaled /app/ destinations.
const AllScopes = "subscribe:/topic/# send:/topic/# subscribe:/queue/# send:/queue/# " +
	"subscribe:/amq/queue/# send:/amq/queue/# send:/reply-queue/# send:/app/#"

// Token mints an HS256 token with Secret. claims override the defaults
// (sub, exp in one hour, jti, scope AllScopes); a nil value removes a claim.
func Token(t testing.TB, sub string, claims jwt.MapClaims) string {
	t.Helper()
	c := jwt.MapClaims{"sub": sub, "exp": time.Now().Add(time.Hour).Unix(), "jti": ulid.Make().String(), "scope": AllScopes}
	for k, v := range claims {
		if v == nil {
			delete(c, k)
			continue
		}
		c[k] = v
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString([]byte(Secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// WaitFor polls fn until it returns nil or timeout passes.
func WaitFor(t testing.TB, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = fn(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Queue is the subset of the management API's queue object tests read.
type Queue struct {
	Name      string `json:"name"`
	Messages  int    `json:"messages"`
	Consumers int    `json:"consumers"`
}

// Queues lists the queues of vhost.
func Queues(vhost string) ([]Queue, error) {
	var qs []Queue
	err := Mgmt("GET", "/api/queues/"+url.PathEscape(vhost), nil, &qs)
	return qs, err
}

// Connection is the subset of the management API's connection object.
type Connection struct {
	Name     string `json:"name"`
	Vhost    string `json:"vhost"`
	User     string `json:"user"`
	Protocol string `json:"protocol"`
}

// Connections lists broker connections on vhost.
func Connections(vhost string) ([]Connection, error) {
	var cs []Connection
	if err := Mgmt("GET", "/api/vhosts/"+url.PathEscape(vhost)+"/connections", nil, &cs); err != nil {
		return nil, err
	}
	return cs, nil
}

// SyncBuffer is a bytes.Buffer that a program under test may write (logs,
// stdout) while the test reads it.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
