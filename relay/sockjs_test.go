package relay

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/stompgate/stompgate/internal/testenv"
)

// sockjsClient speaks SockJS's xhr-polling transport, the one a browser
// falls back to when a proxy strips Upgrade.
type sockjsClient struct {
	t      *testing.T
	base   string // http://host/sockjs/000/<session>
	origin string
	cookie string
	buf    []string // frames received, not yet taken
	closed string   // the close frame, once seen
}

func newSockJS(t *testing.T, e *edge, origin string) *sockjsClient {
	return &sockjsClient{t: t, base: e.http.URL + "/sockjs/000/" + strings.ToLower(ulid.Make().String()), origin: origin}
}

func (c *sockjsClient) post(path, body string) (int, string) {
	c.t.Helper()
	req, _ := http.NewRequest("POST", c.base+path, strings.NewReader(body))
	if c.origin != "" {
		req.Header.Set("Origin", c.origin)
	}
	if c.cookie != "" {
		req.Header.Set("Cookie", c.cookie)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// open starts the session ("o").
func (c *sockjsClient) open() {
	c.t.Helper()
	if code, body := c.post("/xhr", ""); code != 200 || body != "o\n" {
		c.t.Fatalf("open: %d %q", code, body)
	}
}

func (c *sockjsClient) send(frames ...string) {
	c.t.Helper()
	b, _ := json.Marshal(frames)
	if code, body := c.post("/xhr_send", string(b)); code != 204 {
		c.t.Fatalf("xhr_send: %d %q", code, body)
	}
}

// next returns the next STOMP frame text (heart-beat EOLs skipped).
func (c *sockjsClient) next() string {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(c.buf) == 0 {
		if c.closed != "" || time.Now().After(deadline) {
			c.t.Fatalf("no frame (closed=%q)", c.closed)
		}
		c.poll()
	}
	f := c.buf[0]
	c.buf = c.buf[1:]
	return f
}

func (c *sockjsClient) poll() {
	c.t.Helper()
	_, body := c.post("/xhr", "")
	switch {
	case strings.HasPrefix(body, "a"):
		var msgs []string
		if err := json.Unmarshal([]byte(strings.TrimSpace(body[1:])), &msgs); err != nil {
			c.t.Fatalf("bad array frame %q: %v", body, err)
		}
		for _, m := range msgs {
			if m != "\n" {
				c.buf = append(c.buf, m)
			}
		}
	case strings.HasPrefix(body, "c"):
		c.closed = strings.TrimSpace(body)
	}
}

// expectClose polls until the close frame.
func (c *sockjsClient) expectClose() string {
	c.t.Helper()
	for i := 0; c.closed == "" && i < 20; i++ {
		c.poll()
		if len(c.buf) > 0 {
			c.t.Fatalf("frame before close: %q", c.buf[0])
		}
	}
	if c.closed == "" {
		c.t.Fatal("no close frame")
	}
	return c.closed
}

func TestSockJSSession(t *testing.T) {
	t.Parallel()
	e, _ := startMemEdge(t, nil, nil)
	c := newSockJS(t, e, "https://app.example.com")
	c.open()
	c.send("CONNECT\naccept-version:1.2\nAuthorization:Bearer " + testenv.Token(t, "alice", nil) + "\n\n\x00")
	if f := c.next(); !strings.HasPrefix(f, "CONNECTED\n") || !strings.Contains(f, "user-name:alice") {
		t.Fatalf("got %q", f)
	}
	c.send("SUBSCRIBE\nid:1\ndestination:/topic/sj\nreceipt:r\n\n\x00", "SEND\ndestination:/topic/sj\nx-user-id:mallory\n\nhi over sockjs\x00")
	if f := c.next(); !strings.HasPrefix(f, "RECEIPT\n") {
		t.Fatalf("got %q", f)
	}
	f := c.next()
	if !strings.HasPrefix(f, "MESSAGE\n") || !strings.Contains(f, "x-user-id:alice\n") || !strings.HasSuffix(f, "\n\nhi over sockjs\x00") {
		t.Fatalf("got %q", f)
	}
	c.send("DISCONNECT\nreceipt:bye\n\n\x00")
	if f := c.next(); !strings.HasPrefix(f, "RECEIPT\nreceipt-id:bye") {
		t.Fatalf("got %q", f)
	}
	if got := c.expectClose(); !strings.HasPrefix(got, "c[1000") {
		t.Fatalf("close %q", got)
	}
}

// TestSockJSErrorBeforeClose: a refusal reaches a SockJS client as an
// ERROR frame before the close, like on /ws.
func TestSockJSErrorBeforeClose(t *testing.T) {
	t.Parallel()
	e, _ := startMemEdge(t, nil, nil)
	c := newSockJS(t, e, "https://app.example.com")
	c.open()
	c.send("CONNECT\naccept-version:1.2\nAuthorization:Bearer not-a-jwt\n\n\x00")
	if f := c.next(); !strings.HasPrefix(f, "ERROR\n") || !strings.Contains(f, "x-error-code:unauthenticated") {
		t.Fatalf("got %q", f)
	}
	if got := c.expectClose(); !strings.HasPrefix(got, "c[1008") {
		t.Fatalf("close %q", got)
	}
}

// TestSockJSOriginPolicy: the /ws Origin rules hold for every SockJS
// request, and a cookie is never accepted without an allowed Origin.
func TestSockJSOriginPolicy(t *testing.T) {
	t.Parallel()
	e, _ := startMemEdge(t, nil, nil)
	evil := newSockJS(t, e, "https://evil.example.net")
	if code, _ := evil.post("/xhr", ""); code != http.StatusForbidden {
		t.Fatalf("foreign origin: %d", code)
	}
	cookie := newSockJS(t, e, "")
	cookie.cookie = "access_token=" + testenv.Token(t, "alice", nil)
	if code, _ := cookie.post("/xhr", ""); code != http.StatusForbidden {
		t.Fatalf("cookie without Origin: %d", code)
	}
	resp, err := http.Get(e.http.URL + "/sockjs/info")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/sockjs/info %d", resp.StatusCode)
	}
	ok := newSockJS(t, e, "https://app.example.com")
	ok.cookie = "access_token=" + testenv.Token(t, "alice", nil)
	ok.open()
	ok.send("CONNECT\naccept-version:1.2\n\n\x00") // the cookie authenticates
	if f := ok.next(); !strings.HasPrefix(f, "CONNECTED\n") {
		t.Fatalf("got %q", f)
	}
	if n := counter(e.metrics.HTTPRefused.WithLabelValues("origin")); n != 2 {
		t.Fatal(fmt.Sprintf("origin refusals = %v", n))
	}
}
