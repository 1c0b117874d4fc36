package faults

// The harness: binaries built once, edge and persister processes, metrics
// scraped from /metrics, STOMP clients, and gating of the long scenarios.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/stomp"
	"github.com/stompgate/stompgate/stomp/stompws"
)

// longFaults skips t unless STOMPGATE_FAULTS=1 (make faults): the
// scenarios that take minutes or thousands of sockets stay out of make test.
func longFaults(t *testing.T) {
	t.Helper()
	testenv.Integration(t)
	if os.Getenv("STOMPGATE_FAULTS") != "1" {
		t.Skip("long fault scenario: runs with STOMPGATE_FAULTS=1 (make faults)")
	}
}

// raiseFDLimit lifts the soft RLIMIT_NOFILE of the test process to its hard
// limit (thousands of client sockets) and returns the new soft limit.
func raiseFDLimit(t *testing.T, need uint64) {
	t.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			t.Fatal(err)
		}
	}
	if rl.Cur < need {
		t.Skipf("RLIMIT_NOFILE hard limit %d < %d sockets this scenario needs", rl.Max, need)
	}
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binary returns the path of cmd/<name>, building cmd/edge and
// cmd/persister once per test process.
func binary(t *testing.T, name string) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "sg-faults-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", binDir+"/", "./cmd/edge", "./cmd/persister")
		cmd.Dir = filepath.Join("..", "..")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, name)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// proc is a child process of the test with its output captured.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *testenv.SyncBuffer
	done chan struct{} // closed when the process has exited
	err  error         // Wait's result, set before done closes
}

// startProc runs bin with exactly env (plus PATH and HOME) and kills it,
// if still running, when t ends; its output is logged if t failed.
func startProc(t *testing.T, name, bin string, env map[string]string) *proc {
	t.Helper()
	p := &proc{name: name, out: &testenv.SyncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin)
	p.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range env {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s output (last 8 KiB):\n%s", name, tail(p.out.String(), 8<<10))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// stop sends SIGTERM and waits up to timeout for the exit.
func (p *proc) stop(t *testing.T, timeout time.Duration) error {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not exit within %s of SIGTERM", p.name, timeout)
	}
}

// edgeProc is a cmd/edge process.
type edgeProc struct {
	*proc
	addr string // host:port
	url  string // ws://addr/ws
}

// edgeEnv is what every edge of these tests runs with: the test secret, a
// loopback port, guest on vhost of the shared broker, no drain delay.
func edgeEnv(vhost string) map[string]string {
	return map[string]string{
		"EDGE_JWT_HS256_SECRET": testenv.Secret,
		"EDGE_LISTEN":           "127.0.0.1:0",
		"EDGE_BROKER_ADDRS":     testenv.StompAddr,
		"EDGE_BROKER_LOGIN":     "guest",
		"EDGE_BROKER_PASSCODE":  "guest",
		"EDGE_BROKER_VHOST":     vhost,
		"EDGE_ALLOWED_ORIGINS":  "http://localhost:*",
		"EDGE_DRAIN_DELAY":      "0s",
		"EDGE_DRAIN_PERIOD":     "0s",
		"EDGE_SCHED_POLICY":     "other",
		"LOG_LEVEL":             "info",
	}
}

var listening = regexp.MustCompile(`listening on (\S+)`)

// startEdgeProc runs cmd/edge with edgeEnv(vhost) overridden by env and
// waits until it listens and /readyz answers 200.
func startEdgeProc(t *testing.T, name, vhost string, env map[string]string) *edgeProc {
	t.Helper()
	vars := edgeEnv(vhost)
	for k, v := range env {
		vars[k] = v
	}
	e := &edgeProc{proc: startProc(t, name, binary(t, "edge"), vars)}
	testenv.WaitFor(t, 30*time.Second, func() error {
		select {
		case <-e.done:
			return fmt.Errorf("%s exited: %v: %s", name, e.err, e.out.String())
		default:
		}
		m := listening.FindStringSubmatch(e.out.String())
		if m == nil {
			return errors.New("not listening yet")
		}
		e.addr = m[1]
		return nil
	})
	e.url = "ws://" + e.addr + "/ws"
	testenv.WaitFor(t, 30*time.Second, func() error {
		if code, body := e.ready(); code != 200 {
			return fmt.Errorf("/readyz %d %s", code, body)
		}
		return nil
	})
	return e
}

// httpClient keeps no idle connections: a scrape leaves nothing behind in
// the edge being measured.
var httpClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func get(url string) (int, string) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// ready is /readyz's status and body.
func (e *edgeProc) ready() (int, string) { return get("http://" + e.addr + "/readyz") }

// metrics scrapes /metrics of addr into series → value, the series being
// the name with its labels as printed (`name{a="b"}`).
func metrics(addr string) (map[string]float64, error) {
	code, body := get("http://" + addr + "/metrics")
	if code != 200 {
		return nil, fmt.Errorf("/metrics: %d %s", code, tail(body, 200))
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// sum adds up every series of metric name (any labels).
func sum(m map[string]float64, name string) float64 {
	var s float64
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			s += v
		}
	}
	return s
}

// metric is one metric of addr, summed over its labels; NaN-free: an
// unreachable edge fails t.
func metric(t *testing.T, addr, name string) float64 {
	t.Helper()
	m, err := metrics(addr)
	if err != nil {
		t.Fatal(err)
	}
	return sum(m, name)
}

// readyDetail decodes a /readyz body.
type readyDetail struct {
	Ready       bool   `json:"ready"`
	Broker      string `json:"broker"`
	Draining    bool   `json:"draining"`
	Sessions    int64  `json:"sessions"`
	Revocations string `json:"revocations"`
}

func parseReady(body string) readyDetail {
	var d readyDetail
	_ = json.Unmarshal([]byte(body), &d)
	return d
}

// client is a connected STOMP-over-WebSocket session. After dial returns,
// one goroutine reads frames into frames (closed with done when the
// socket ends); writes are for the caller's goroutine.
type client struct {
	ws     *stompws.Conn
	frames chan *frame.Frame // buffered: bursts of a test, see dial
	done   chan struct{}
	err    error // the reader's end, set before done closes
}

// dialErr is a failed dial with what the edge answered.
type dialErr struct {
	status     int    // HTTP status of a refused upgrade, 0 if none
	retryAfter string // its Retry-After
	code       string // x-error-code of an ERROR answering CONNECT
	err        error
}

func (e *dialErr) Error() string {
	return fmt.Sprintf("dial: status %d retry-after %q code %q: %v", e.status, e.retryAfter, e.code, e.err)
}

// dialOpts tune dial.
type dialOpts struct {
	heartBeat time.Duration // offered both ways; 0: none
	noReader  bool          // leave the socket unread (zombies)
	buffer    int           // frames channel capacity; default 1024
}

// dial opens a session on url with token and waits for CONNECTED.
func dial(ctx context.Context, url, token string, o dialOpts) (*client, error) {
	ws, resp, err := stompws.Dial(ctx, url, stompws.Options{
		Header:           http.Header{"Origin": {"http://localhost:3000"}},
		HeartBeat:        stompws.HeartBeat{Send: o.heartBeat, Recv: o.heartBeat},
		HandshakeTimeout: 10 * time.Second,
		AutoFlush:        true,
		WriteBufferSize:  4 << 10,
		ReadBufferSize:   4 << 10,
	})
	if err != nil {
		de := &dialErr{err: err}
		if resp != nil {
			de.status, de.retryAfter = resp.StatusCode, resp.Header.Get("Retry-After")
		}
		return nil, de
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if dl, ok := cctx.Deadline(); ok {
		_ = ws.SetReadDeadline(dl)
	}
	if err := ws.Send(frame.New(frame.CONNECT, frame.AcceptVersion, "1.2", frame.Host, "/",
		frame.Passcode, token, frame.HeartBeat, millis(o.heartBeat)+","+millis(o.heartBeat))); err != nil {
		ws.Close()
		return nil, &dialErr{err: err}
	}
	f, _, err := ws.ReadFrame()
	_ = ws.SetReadDeadline(time.Time{})
	if err != nil {
		ws.Close()
		return nil, &dialErr{err: err}
	}
	if f.Command != frame.CONNECTED {
		ws.Close()
		return nil, &dialErr{code: f.Header.Get("x-error-code"), err: fmt.Errorf("%s %s", f.Command, f.Header.Get("message"))}
	}
	ws.SetVersion(stomp.V12)
	c := &client{ws: ws, done: make(chan struct{})}
	if o.noReader {
		close(c.done)
		return c, nil
	}
	if o.buffer == 0 {
		o.buffer = 1024
	}
	c.frames = make(chan *frame.Frame, o.buffer)
	go func() {
		defer close(c.done)
		defer close(c.frames)
		c.err = ws.ReadLoop(func(f *frame.Frame, _ bool) error {
			f.Body = append([]byte(nil), f.Body...)
			c.frames <- f
			return nil
		}, nil)
	}()
	return c, nil
}

func millis(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }

// send writes one frame (the caller's goroutine is the writer).
func (c *client) send(command string, headers ...string) error {
	return c.ws.Send(frame.New(command, headers...))
}

// sendBody writes one frame with a body.
func (c *client) sendBody(command string, body []byte, headers ...string) error {
	f := frame.New(command, headers...)
	f.Body = body
	return c.ws.Send(f)
}

// next returns the next frame within timeout, or nil when the socket
// ended or the time passed.
func (c *client) next(timeout time.Duration) *frame.Frame {
	select {
	case f := <-c.frames:
		return f
	case <-time.After(timeout):
		return nil
	}
}

// await reads until a frame matches want, within timeout; frames before it
// are passed to skip (may be nil).
func (c *client) await(timeout time.Duration, want func(*frame.Frame) bool, skip func(*frame.Frame)) (*frame.Frame, error) {
	deadline := time.After(timeout)
	for {
		select {
		case f, ok := <-c.frames:
			if !ok {
				return nil, fmt.Errorf("socket ended: %v", c.err)
			}
			if want(f) {
				return f, nil
			}
			if skip != nil {
				skip(f)
			}
		case <-deadline:
			return nil, fmt.Errorf("nothing matching within %s", timeout)
		}
	}
}

func receiptFor(id string) func(*frame.Frame) bool {
	return func(f *frame.Frame) bool {
		return f.Command == frame.RECEIPT && f.Header.Get(frame.ReceiptId) == id || f.Command == frame.ERROR
	}
}

// subscribe subscribes and waits for the receipt.
func (c *client) subscribe(id, dest string, headers ...string) error {
	h := append([]string{frame.Id, id, frame.Destination, dest, frame.Receipt, "sub-" + id}, headers...)
	if err := c.send(frame.SUBSCRIBE, h...); err != nil {
		return err
	}
	f, err := c.await(10*time.Second, receiptFor("sub-"+id), nil)
	if err != nil {
		return fmt.Errorf("SUBSCRIBE %s: %w", dest, err)
	}
	if f.Command == frame.ERROR {
		return fmt.Errorf("SUBSCRIBE %s: ERROR %s %s", dest, f.Header.Get("x-error-code"), f.Header.Get("message"))
	}
	return nil
}

func (c *client) close() { c.ws.Close(); <-c.done }

// errorCode is the x-error-code of an ERROR frame, "" for other frames.
func errorCode(f *frame.Frame) string {
	if f == nil || f.Command != frame.ERROR {
		return ""
	}
	return f.Header.Get("x-error-code")
}

// mgmtCount is the number of objects the management API lists at path
// (e.g. /api/vhosts/V/connections).
func mgmtCount(path string) (int, error) {
	var list []json.RawMessage
	if err := testenv.Mgmt("GET", path, nil, &list); err != nil {
		return 0, err
	}
	return len(list), nil
}

// histogram renders per-second counts as "0:12 1:200 ...".
func histogram(buckets []int) string {
	var b bytes.Buffer
	for i, n := range buckets {
		fmt.Fprintf(&b, "%d:%d ", i, n)
	}
	return strings.TrimSpace(b.String())
}

// group runs functions on at most n goroutines at once and keeps the first
// error (errgroup's SetLimit, without the dependency).
type group struct {
	sem  chan struct{} // n slots
	wg   sync.WaitGroup
	once sync.Once
	err  error
}

func newGroup(n int) *group { return &group{sem: make(chan struct{}, n)} }

func (g *group) Go(fn func() error) {
	g.sem <- struct{}{}
	g.wg.Add(1)
	go func() {
		defer func() { <-g.sem; g.wg.Done() }()
		if err := fn(); err != nil {
			g.once.Do(func() { g.err = err })
		}
	}()
}

func (g *group) Wait() error { g.wg.Wait(); return g.err }
