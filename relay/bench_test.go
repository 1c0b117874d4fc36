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
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stompgate/stompgate/auth"
	"github.com/stompgate/stompgate/config"
	"github.com/stompgate/stompgate/relay/broker"
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

// discardBroker is a broker.Session that encodes every frame as the STOMP
// connection does (stompconn) into a buffer that discards: the session's
// broker-side cost without a socket.
type discardBroker struct {
	w       *bufio.Writer
	scratch []byte
}

func (d *discardBroker) write(f *frame.Frame) error {
	d.scratch = stomp.AppendFrame(d.scratch[:0], f, stomp.V12)
	_, err := d.w.Write(d.scratch)
	return err
}

func (d *discardBroker) Send(m broker.Message) error {
	return d.write(&frame.Frame{Command: frame.SEND, Header: m.Header, Body: m.Body})
}
func (d *discardBroker) Subscribe(s broker.Subscription) error {
	return d.write(&frame.Frame{Command: frame.SUBSCRIBE, Header: s.Header})
}
func (d *discardBroker) Unsubscribe(string, string) error { return nil }
func (d *discardBroker) Ack(broker.Ack) error             { return nil }
func (d *discardBroker) Begin(string, string) error       { return nil }
func (d *discardBroker) Commit(string, string) error      { return nil }
func (d *discardBroker) Abort(string, string) error       { return nil }
func (d *discardBroker) Disconnect(string) error          { return nil }
func (d *discardBroker) Flush() error                     { return d.w.Flush() }
func (d *discardBroker) Close() error                     { return nil }

// benchSession builds a connected Session with no WebSocket whose broker
// side writes to io.Discard: enough to run the session's per-frame code.
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
	m := NewMetrics(prometheus.NewRegistry())
	env := &sessionEnv{cfg: &cfg, limits: benchLimits, metrics: m, clock: SystemClock{},
		guard: Guard{RateMaxWait: cfg.RateMaxWait, MaxSubscriptions: cfg.MaxSubscriptions}}
	ident := auth.Identity{Subject: "alice", Expiry: time.Now().Add(time.Hour),
		Scopes: []string{"send:/topic/bench.relay", "subscribe:/topic/bench.relay"}}
	perms, err := auth.NewPermissions(ident, nil)
	if err != nil {
		b.Fatal(err)
	}
	s := &Session{
		env:       env,
		log:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		parser:    stomp.NewParser(benchLimits, stomp.ClientCommands),
		connected: true,
		limiter:   &auth.SessionLimiter{}, // no rate limit
		subs:      map[string]subscription{},
		bs:        &discardBroker{w: bufio.NewWriterSize(io.Discard, 32<<10)},
	}
	s.out = newOutbox(nil, cfg.SendBufferBytes, cfg.SendTimeLimit, m, nil)
	s.creds.Store(&Credentials{Ident: ident, Perms: perms})
	s.parser.Version = v
	s.version.Store(int32(v))
	return s
}

// BenchmarkSessionClientSend runs one WebSocket message holding one SEND
// through Session.readMessage: parse, the guard's per-SEND checks and
// identity stamping (onSend), re-encode and buffered write to the broker
// side.
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
				if err := s.bs.Flush(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSessionBrokerMessage runs one broker MESSAGE through what the
// broker side and the session do with it: parse (the STOMP connection's
// parser), stomp.AppendMessage for the client's version, and the sink's
// Deliver into the outbox. The queue is emptied every iteration, as the
// writer would.
func BenchmarkSessionBrokerMessage(b *testing.B) {
	for _, v := range []stomp.Version{stomp.V12, stomp.V10} {
		b.Run("v"+v.String(), func(b *testing.B) {
			s := benchSession(b, v)
			sink := sessionSink{s}
			p := stomp.NewParser(stomp.Limits{MaxFrameBytes: 16 << 20, MaxHeaders: 1000, MaxHeaderBytes: 16 << 20}, stomp.ServerCommands)
			b.ReportAllocs()
			b.SetBytes(int64(len(benchBrokerMessage)))
			for b.Loop() {
				p.Feed(benchBrokerMessage)
				f, err := p.Next()
				if err != nil || f == nil {
					b.Fatalf("frame %v, err %v", f, err)
				}
				sink.Deliver(broker.NewFrame(stomp.AppendMessage(make([]byte, 0, 128+len(f.Body)+32*f.Header.Len()), f, v), frame.MESSAGE, time.Now()))
				p.Compact()
				s.out.mu.Lock()
				s.out.queue, s.out.queued = s.out.queue[:0], 0
				s.out.mu.Unlock()
			}
		})
	}
}
