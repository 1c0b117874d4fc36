package stomp

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/go-stomp/stomp/v3/frame"
)

var testLimits = Limits{MaxFrameBytes: 64 << 10, MaxHeaders: 64, MaxHeaderBytes: 8 << 10}

// parseAll feeds input in chunks read from r and returns every frame.
func parseAll(t *testing.T, p *Parser, r io.Reader) ([]*frame.Frame, error) {
	t.Helper()
	var out []*frame.Frame
	buf := make([]byte, 7)
	for {
		n, err := r.Read(buf)
		p.Feed(buf[:n])
		for {
			f, perr := p.Next()
			if perr != nil {
				return out, perr
			}
			if f == nil {
				break
			}
			f.Body = append([]byte(nil), f.Body...) // bodies alias the parser buffer
			out = append(out, f)
		}
		p.Compact()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

func TestParserFrames(t *testing.T) {
	tests := []struct {
		name    string
		version Version
		in      string
		want    []string // command|header=value,...|body
		code    string   // expected FrameError code
	}{
		{name: "send", version: V12, in: "SEND\ndestination:/topic/a\n\nhello\x00",
			want: []string{"SEND|destination=/topic/a|hello"}},
		{name: "crlf and heart-beats", version: V12, in: "\n\r\nSEND\r\ndestination:/topic/a\r\n\r\nhi\x00\n\n",
			want: []string{"SEND|destination=/topic/a|hi"}},
		{name: "two frames", version: V12, in: "SEND\ndestination:/a\n\n1\x00SEND\ndestination:/b\n\n2\x00",
			want: []string{"SEND|destination=/a|1", "SEND|destination=/b|2"}},
		{name: "content-length body with NUL", version: V12, in: "SEND\ndestination:/a\ncontent-length:3\n\na\x00b\x00",
			want: []string{"SEND|destination=/a,content-length=3|a\x00b"}},
		{name: "1.2 escapes", version: V12, in: "SEND\ndestination:/a\nk\\cey:v\\na\\rl\\\\\n\n\x00",
			want: []string{"SEND|destination=/a,k:ey=v\na\rl\\|"}},
		{name: "1.0 has no escapes", version: V10, in: "SEND\ndestination:/a\nk:v\\nx\n\n\x00",
			want: []string{"SEND|destination=/a,k=v\\nx|"}},
		{name: "CONNECT is never unescaped", version: V12, in: "CONNECT\npasscode:a\\nb\n\n\x00",
			want: []string{"CONNECT|passcode=a\\nb|"}},
		{name: "first header wins", version: V12, in: "SEND\ndestination:/a\ndestination:/evil\n\n\x00",
			want: []string{"SEND|destination=/a|"}},
		{name: "undefined escape", version: V12, in: "SEND\ndestination:/a\nk:\\t\n\n\x00", code: CodeBadFrame},
		{name: "lone backslash", version: V11, in: "SEND\ndestination:/a\nk:x\\\n\n\x00", code: CodeBadFrame},
		{name: "unknown command", version: V12, in: "HELLO\n\n\x00", code: CodeBadFrame},
		{name: "server command from client", version: V12, in: "MESSAGE\n\n\x00", code: CodeBadFrame},
		{name: "header without colon", version: V12, in: "SEND\nnocolon\n\n\x00", code: CodeBadFrame},
		{name: "NUL in header", version: V12, in: "SEND\nk:a\x00b\n\n\x00", code: CodeBadFrame},
		{name: "bad content-length", version: V12, in: "SEND\ncontent-length:x\n\n\x00", code: CodeBadFrame},
		{name: "content-length not NUL-terminated", version: V12, in: "SEND\ncontent-length:1\n\nab\x00", code: CodeBadFrame},
		{name: "declared too large", version: V12, in: "SEND\ncontent-length:70000\n\n", code: CodeFrameTooLarge},
		{name: "body too large", version: V12, in: "SEND\ndestination:/a\n\n" + strings.Repeat("x", 70<<10) + "\x00", code: CodeFrameTooLarge},
		{name: "header line too long", version: V12, in: "SEND\nk:" + strings.Repeat("x", 9<<10) + "\n\n\x00", code: CodeFrameTooLarge},
		{name: "too many headers", version: V12, in: "SEND\n" + strings.Repeat("h:v\n", 65) + "\n\x00", code: CodeFrameTooLarge},
	}
	for _, tt := range tests {
		for _, oneByte := range []bool{false, true} {
			name := tt.name
			if oneByte {
				name += "/one-byte"
			}
			t.Run(name, func(t *testing.T) {
				p := NewParser(testLimits, ClientCommands)
				p.Version = tt.version
				var r io.Reader = strings.NewReader(tt.in)
				if oneByte {
					r = iotest.OneByteReader(r)
				}
				frames, err := parseAll(t, p, r)
				if tt.code != "" {
					var fe *FrameError
					if !errors.As(err, &fe) || fe.Code != tt.code {
						t.Fatalf("error = %v, want code %s", err, tt.code)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, f := range frames {
					got = append(got, describe(f))
				}
				if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
					t.Fatalf("got\n%q\nwant\n%q", got, tt.want)
				}
			})
		}
	}
}

func describe(f *frame.Frame) string {
	var hs []string
	for i := 0; i < f.Header.Len(); i++ {
		k, v := f.Header.GetAt(i)
		hs = append(hs, k+"="+v)
	}
	return f.Command + "|" + strings.Join(hs, ",") + "|" + string(f.Body)
}

func TestAppendFrameRoundTrip(t *testing.T) {
	for _, v := range []Version{V11, V12} {
		f := frame.New(frame.MESSAGE, "destination", "/topic/a", "weird:key", "line1\nline2\\end:x")
		f.Body = []byte("body")
		enc := AppendFrame(nil, f, v)
		p := NewParser(testLimits, ServerCommands)
		p.Version = v
		p.Feed(enc)
		got, err := p.Next()
		if err != nil || got == nil {
			t.Fatalf("v%s: %v %v", v, got, err)
		}
		if got.Header.Get("weird:key") != "line1\nline2\\end:x" {
			t.Fatalf("v%s: header round trip lost: %q", v, describe(got))
		}
	}
	// STOMP 1.0 cannot carry a line break in a header: it is dropped, never
	// allowed to end the header early.
	f := frame.New(frame.MESSAGE, "k", "a\nx-user-id:evil")
	enc := string(AppendFrame(nil, f, V10))
	if strings.Contains(enc, "\nx-user-id") {
		t.Fatalf("1.0 encoding let a header value inject a header: %q", enc)
	}
}

func FuzzParser(f *testing.F) {
	seeds := []string{
		"CONNECT\naccept-version:1.2\nhost:/\n\n\x00",
		"SEND\ndestination:/topic/a\ncontent-length:5\n\nhello\x00",
		"SEND\ndestination:/topic/a\n\nhi\x00\n\nSUBSCRIBE\nid:1\ndestination:/queue/q\nack:client-individual\n\n\x00",
		"SEND\nk:\\n\\c\\\\\\r\n\n\x00",
		"\r\n\n",
		"SEND\ncontent-length:99999999\n\n",
		// Over each limit: the fuzzer's "never a frame over limits" check
		// trips on these at once if a limit stops being enforced.
		"SEND\ndestination:/a\n\n" + strings.Repeat("b", 5000) + "\x00",
		"SEND\ndestination:/a\ncontent-length:5000\n\n" + strings.Repeat("b", 5000) + "\x00",
		"SEND\nk:" + strings.Repeat("v", 600) + "\n\n\x00",
		"SEND\n" + strings.Repeat("h:v\n", 20) + "\n\x00",
	}
	for _, s := range seeds {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		// The same bytes in one piece and split into chunks must give the
		// same frames or the same error, never a panic or a frame over limits.
		whole := NewParser(fuzzLimits, ClientCommands)
		parts := NewParser(fuzzLimits, ClientCommands)
		a, errA := collect(whole, [][]byte{data})
		for _, fr := range a {
			checkWithinLimits(t, fr, fuzzLimits)
		}
		chunk := int(split%16) + 1
		var pieces [][]byte
		for i := 0; i < len(data); i += chunk {
			pieces = append(pieces, data[i:min(i+chunk, len(data))])
		}
		b, errB := collect(parts, pieces)
		if (errA == nil) != (errB == nil) {
			t.Fatalf("split changed the outcome: %v vs %v", errA, errB)
		}
		if errA == nil && !bytes.Equal(encodeAll(a), encodeAll(b)) {
			t.Fatalf("split changed the frames")
		}
	})
}

func collect(p *Parser, pieces [][]byte) ([]*frame.Frame, error) {
	var out []*frame.Frame
	for _, piece := range pieces {
		p.Feed(piece)
		for f, err := range p.Frames() {
			if err != nil {
				return out, err
			}
			f.Body = append([]byte(nil), f.Body...)
			out = append(out, f)
		}
	}
	return out, nil
}

func encodeAll(fs []*frame.Frame) []byte {
	var b []byte
	for _, f := range fs {
		b = AppendFrame(b, f, V12)
	}
	return b
}

var fuzzLimits = Limits{MaxFrameBytes: 4096, MaxHeaders: 16, MaxHeaderBytes: 512}

// checkWithinLimits fails when a frame the parser returned breaks one of
// the limits (decoded headers are never longer than their wire form).
func checkWithinLimits(t *testing.T, f *frame.Frame, l Limits) {
	t.Helper()
	if f.Header.Len() > l.MaxHeaders {
		t.Fatalf("frame with %d headers, limit %d", f.Header.Len(), l.MaxHeaders)
	}
	size := len(f.Command) + 2 + len(f.Body)
	for i := 0; i < f.Header.Len(); i++ {
		k, v := f.Header.GetAt(i)
		if n := len(k) + 1 + len(v); n > l.MaxHeaderBytes {
			t.Fatalf("header line of %d bytes, limit %d", n, l.MaxHeaderBytes)
		}
		size += len(k) + len(v) + 2
	}
	if size > l.MaxFrameBytes {
		t.Fatalf("frame of %d bytes, limit %d", size, l.MaxFrameBytes)
	}
}
