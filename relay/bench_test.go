package relay

// Benchmarks of the per-frame relay path, without sockets:
//
//	go test -run '^$' -bench . -benchmem ./relay
//
// Every benchmark handles one frame per iteration, so ns/op, B/op and
// allocs/op are per frame. The Session benchmarks drive the session's own
// code (readMessage → handle → onSend → stompLink.Write, and the broker
// reader's encode → enqueue) on a Session built without a WebSocket; the
// Codec benchmarks isolate stomp.Parser and stomp.AppendFrame. docs/BENCHMARKS.md has
// the numbers and how they relate to the end-to-end stompload runs.

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stompgate/stompgate/auth"
	"github.com/stompgate/stompgate/config"
	"github.com/stompgate/stompgate/stomp"
)

var benchLimits = stomp.Limits{MaxFrameBytes: 64 << 10, MaxHeaders: 64, MaxHeaderBytes: 8 << 10}

// benchBody is a 256-byte text body, like stompload's.
var benchBody = strings.Repeat("x", 256)

// benchClientSend is a SEND as @stomp/stompjs 7 writes it into one
// WebSocket message.
var benchClientSend = []byte("SEND\ndestination:/topic/bench.relay\ncontent-type:text/plain\ncontent-length:256\n\n" + benchBody + "\x00")

// benchClientSendWithID also carries amqp-message-id, so the edge does not
// mint a ULID.
var benchClientSendWithID = []byte("SEND\ndestination:/topic/bench.relay\ncontent-type:text/plain\namqp-message-id:01JBENCH000000000000000000\ncontent-length:256\n\n" + benchBody + "\x00")

// benchBrokerMessage is a MESSAGE as RabbitMQ 3.x's STOMP adapter sends a
// frame published through the edge.
var benchBrokerMessage = []byte("MESSAGE\nsubscription:sub-0\ndestination:/topic/bench.relay\nmessage-id:T_sub-0@@session-Rf3KfWl7zNQ8rQe0vM3Jqw@@1234\nredelivered:false\nx-user-id:alice\namqp-message-id:01JBENCH000000000000000000\ncontent-type:text/plain\ncontent-length:256\n\n" + benchBody + "\x00")

// BenchmarkCodecParseSend parses one client SEND fed as one WebSocket
// message.
func BenchmarkCodecParseSend(b *testing.B) {
	p := stomp.NewParser(benchLimits, stomp.ClientCommands)
	b.ReportAllocs()
	b.SetBytes(int64(len(benchClientSend)))
	for b.Loop() {
		p.Feed(benchClientSend)
		f, err := p.Next()
		if err != nil || f == nil {
			b.Fatalf("frame %v, err %v", f, err)
		}
		p.Compact()
	}
}

// BenchmarkCodecSendToBroker parses a client SEND and re-encodes it for the
// broker leg (STOMP 1.2), as stompLink.Write does, into a reused buffer.
func BenchmarkCodecSendToBroker(b *testing.B) {
	p := stomp.NewParser(benchLimits, stomp.ClientCommands)
	var scratch []byte
	b.ReportAllocs()
	b.SetBytes(int64(len(benchClientSend)))
	for b.Loop() {
		p.Feed(benchClientSend)
		f, err := p.Next()
		if err != nil || f == nil {
			b.Fatalf("frame %v, err %v", f, err)
		}
		scratch = stomp.AppendFrame(scratch[:0], f, stomp.V12)
		p.Compact()
	}
}

// BenchmarkCodecBrokerMessage parses a broker MESSAGE and encodes it for a
// client, into a fresh buffer sized like Session.encode's (the encoded
// frame is handed to the writer goroutine, so it cannot be reused), and
// checks UTF-8 as enqueue does.
func BenchmarkCodecBrokerMessage(b *testing.B) {
	for _, v := range []stomp.Version{stomp.V12, stomp.V10} {
		b.Run("v"+v.String(), func(b *testing.B) {
			p := stomp.NewParser(benchLimits, stomp.ServerCommands)
			b.ReportAllocs()
			b.SetBytes(int64(len(benchBrokerMessage)))
			for b.Loop() {
				p.Feed(benchBrokerMessage)
				f, err := p.Next()
				if err != nil || f == nil {
					b.Fatalf("frame %v, err %v", f, err)
				}
				out := stomp.AppendFrame(make([]byte, 0, 128+len(f.Body)+32*f.Header.Len()), f, v)
				if !utf8.Valid(out) {
					b.Fatal("invalid UTF-8")
				}
				p.Compact()
			}
		})
	}
}

// BenchmarkCodecSplitInput feeds a stream of SEND frames in fixed-size
// pieces that straddle frame boundaries (a frame spanning WebSocket
// messages, a message holding parts of several frames), as a TCP read
// loop or a fragmenting client would.
func BenchmarkCodecSplitInput(b *testing.B) {
	const frames = 64
	stream := bytes.Repeat(benchClientSend, frames)
	for _, chunk := range []int{7, 100, 1500, 16 << 10} {
		b.Run("chunk="+strconv.Itoa(chunk), func(b *testing.B) {
			p := stomp.NewParser(benchLimits, stomp.ClientCommands)
			b.ReportAllocs()
			b.SetBytes(int64(len(stream)))
			for b.Loop() {
				n := 0
				for off := 0; off < len(stream); off += chunk {
					p.Feed(stream[off:min(off+chunk, len(stream))])
					for {
						f, err := p.Next()
						if err != nil {
							b.Fatal(err)
						}
						if f == nil {
							break
						}
						n++
					}
					p.Compact()
				}
				if n != frames {
					b.Fatalf("parsed %d frames, want %d", n, frames)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*frames), "ns/frame")
			b.ReportMetric(0, "ns/op") // per-op is per 64 frames here; ns/frame is the comparable figure
		})
	}
}

// benchConn is a net.Conn that discards writes; only what stompLink calls
// on the write path is implemented.
type benchConn struct{ net.Conn }

func (benchConn) Write(p []byte) (int, error)      { return len(p), nil }
func (benchConn) SetWriteDeadline(time.Time) error { return nil }

// benchSession builds a connected Session with no WebSocket whose broker
// link writes to io.Discard: enough to run the session's per-frame code.
func benchSession(b *testing.B, v stomp.Version) *Session {
	b.Helper()
	cfg, err := config.LoadEdge(func(k string) string {
		if k == "EDGE_JWT_HS256_SECRET" {
			return "bench-secret-bench-secret-bench-secret-0123"
		}
		return ""
	})
	if err != nil {
		b.Fatal(err)
	}
	srv := &Server{cfg: cfg, metrics: NewMetrics(prometheus.NewRegistry()), now: time.Now, limits: benchLimits}
	link := &stompLink{conn: benchConn{}, w: bufio.NewWriterSize(io.Discard, 32<<10)}
	ident := auth.Identity{Subject: "alice", Expiry: time.Now().Add(time.Hour),
		Scopes: []string{"send:/topic/bench.relay", "subscribe:/topic/bench.relay"}}
	perms, err := auth.NewPermissions(ident, nil)
	if err != nil {
		b.Fatal(err)
	}
	s := &Session{
		srv:       srv,
		log:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		parser:    stomp.NewParser(benchLimits, stomp.ClientCommands),
		connected: true,
		ident:     ident,
		perms:     perms,
		limiter:   &auth.SessionLimiter{}, // no rate limit
		subs:      map[string]struct{}{},
		link:      link,
		rbuf:      make([]byte, 16<<10),
		wake:      make(chan struct{}, 1),
	}
	s.parser.Version = v
	s.version.Store(int32(v))
	return s
}

// BenchmarkSessionClientSend runs one WebSocket message holding one SEND
// through Session.readMessage: parse, per-SEND checks and identity
// stamping (onSend), re-encode and buffered write to the broker link.
func BenchmarkSessionClientSend(b *testing.B) {
	for _, tc := range []struct {
		name string
		msg  []byte
	}{
		{"mint-id", benchClientSend},
		{"client-id", benchClientSendWithID},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s := benchSession(b, stomp.V12)
			r := bytes.NewReader(tc.msg)
			b.ReportAllocs()
			b.SetBytes(int64(len(tc.msg)))
			for b.Loop() {
				r.Reset(tc.msg)
				if err := s.readMessage(r); err != nil {
					b.Fatal(err)
				}
				if err := s.link.Flush(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSessionBrokerMessage runs one broker MESSAGE through what the
// session's broker reader does with it: parse (stompLink's parser),
// Session.encode for the client's version, and enqueue for the writer. The
// queue is emptied every iteration, as the writer would.
func BenchmarkSessionBrokerMessage(b *testing.B) {
	for _, v := range []stomp.Version{stomp.V12, stomp.V10} {
		b.Run("v"+v.String(), func(b *testing.B) {
			s := benchSession(b, v)
			p := stomp.NewParser(stomp.Limits{MaxFrameBytes: 16 << 20, MaxHeaders: 1000, MaxHeaderBytes: 16 << 20}, stomp.ServerCommands)
			b.ReportAllocs()
			b.SetBytes(int64(len(benchBrokerMessage)))
			for b.Loop() {
				p.Feed(benchBrokerMessage)
				f, err := p.Next()
				if err != nil || f == nil {
					b.Fatalf("frame %v, err %v", f, err)
				}
				if err := s.enqueue(s.encode(f), frame.MESSAGE, time.Now(), true); err != nil {
					b.Fatal(err)
				}
				p.Compact()
				s.mu.Lock()
				s.queue, s.queued = s.queue[:0], 0
				s.mu.Unlock()
				select {
				case <-s.wake:
				default:
				}
			}
		})
	}
}
