package stompws

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"strconv"
	"testing"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/gorilla/websocket"

	"github.com/stompgate/stompgate/stomp"
)

// wsText frames p as one unmasked (server-to-client) text message.
func wsText(p []byte) []byte {
	out := []byte{0x81}
	switch {
	case len(p) < 126:
		out = append(out, byte(len(p)))
	case len(p) <= 0xffff:
		out = append(out, 126)
		out = binary.BigEndian.AppendUint16(out, uint16(len(p)))
	default:
		out = append(out, 127)
		out = binary.BigEndian.AppendUint64(out, uint64(len(p)))
	}
	return append(out, p...)
}

var body256 = bytes.Repeat([]byte{'x'}, 256)

// BenchmarkSend is stompload's publisher path: one pre-encoded 256 B SEND
// per WebSocket message, flushed every 64 messages, to a peer that reads
// and discards.
func BenchmarkSend(b *testing.B) {
	for _, batch := range []int{1, 64} {
		b.Run("flush-every-"+strconv.Itoa(batch), func(b *testing.B) {
			c := benchDiscard(b)
			f := frame.New(frame.SEND, frame.Destination, "/topic/bench", frame.ContentLength, "256")
			f.Body = body256
			msg := stomp.AppendFrame(nil, f, stomp.V12)
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if err := c.WriteFrame(msg); err != nil {
					b.Fatal(err)
				}
				if (i+1)%batch == 0 {
					if err := c.Flush(); err != nil {
						b.Fatal(err)
					}
				}
			}
			if err := c.Flush(); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkSendFrame adds encoding: Send of a frame.Frame, flushed every 64.
func BenchmarkSendFrame(b *testing.B) {
	c := benchDiscard(b)
	f := frame.New(frame.SEND, frame.Destination, "/topic/bench", frame.ContentLength, "256")
	f.Body = body256
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if err := c.Send(f); err != nil {
			b.Fatal(err)
		}
		if i%64 == 63 {
			if err := c.Flush(); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkReceive is stompload's subscriber path: ReadLoop over 256 B
// MESSAGE frames, one per WebSocket message, that a peer writes as fast as
// it can.
func BenchmarkReceive(b *testing.B) {
	f := frame.New(frame.MESSAGE, frame.Destination, "/topic/bench", frame.MessageId, "T_0@@session-abc@@1",
		frame.Subscription, "0", "redelivered", "false", frame.ContentType, "text/plain", frame.ContentLength, "256")
	f.Body = body256
	one := wsText(stomp.AppendFrame(nil, f, stomp.V12))
	chunk := bytes.Repeat(one, (64<<10)/len(one))
	s := startServer(b, func(s *server) {
		s.onConn = func(ws *websocket.Conn) {
			for {
				if _, err := ws.NetConn().Write(chunk); err != nil {
					return
				}
			}
		}
	})
	c, _, err := Dial(context.Background(), s.url, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	errDone := errors.New("done")
	n, batches := 0, 0
	b.SetBytes(int64(len(one)))
	b.ReportAllocs()
	b.ResetTimer()
	err = c.ReadLoop(func(f *frame.Frame, binary bool) error {
		n++
		if len(f.Body) != 256 {
			return errors.New("short body")
		}
		if n == b.N {
			return errDone
		}
		return nil
	}, func() { batches++ })
	b.StopTimer()
	if !errors.Is(err, errDone) {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/float64(max(batches, 1)), "frames/read")
}

// benchDiscard dials a peer that reads everything and throws it away.
func benchDiscard(b *testing.B) *Conn {
	s := startServer(b, func(s *server) {
		s.onConn = func(ws *websocket.Conn) { _, _ = io.Copy(io.Discard, ws.NetConn()) }
	})
	c, _, err := Dial(context.Background(), s.url, Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}
