package stomp

import (
	"bytes"
	"iter"
	"strconv"
	"strings"

	"github.com/go-stomp/stomp/v3/frame"
)

// Version is a negotiated STOMP protocol version.
type Version int

const (
	V10 Version = 10
	V11 Version = 11
	V12 Version = 12
)

func (v Version) String() string {
	switch v {
	case V10:
		return "1.0"
	case V11:
		return "1.1"
	}
	return "1.2"
}

// The x-error-code values of the two kinds of FrameError (SPEC §4).
const (
	CodeBadFrame      = "bad_frame"
	CodeFrameTooLarge = "frame_too_large"
)

// FrameError is a protocol violation found while parsing; Code is the
// x-error-code the peer is sent before the connection is closed.
type FrameError struct {
	Code string // CodeBadFrame or CodeFrameTooLarge
	Msg  string
}

func (e *FrameError) Error() string { return e.Code + ": " + e.Msg }

func badFrame(msg string) error { return &FrameError{Code: CodeBadFrame, Msg: msg} }
func tooLarge(msg string) error { return &FrameError{Code: CodeFrameTooLarge, Msg: msg} }

type waitKind uint8

const (
	waitNone waitKind = iota
	waitLine          // for the end of the command or a header line
	waitLen           // for content-length body bytes and the NUL
	waitNul           // for the NUL ending a body without content-length
)

// Limits bound what a Parser accepts.
type Limits struct {
	MaxFrameBytes  int // command + headers + body
	MaxHeaders     int // header lines per frame
	MaxHeaderBytes int // one header line
}

// Parser turns a byte stream (WebSocket messages or a TCP stream, in any
// split) into STOMP frames, decoding header escapes for the negotiated
// version and enforcing Limits before buffering more than a frame's worth.
//
// A Parser is owned by one goroutine. A returned frame's Body aliases the
// parser's buffer: it is valid only until the next Feed or Next call, so
// callers encode or copy it before continuing.
type Parser struct {
	wait    waitKind // why the last parse of a partial frame stopped
	scanned int      // bytes after off looked at by that parse
	need    int      // waitLen: bytes after off needed to finish the frame
	spans   []int    // scratch: header line offsets of the frame being parsed
	kv      []string // scratch: decoded header names and values
	buf     []byte
	off     int // start of unparsed bytes in buf
	limits  Limits
	// Version selects header escaping; CONNECT, STOMP and CONNECTED frames
	// are never escaped whatever the version.
	Version Version
	// Commands lists the commands accepted from this peer.
	Commands map[string]bool
}

// ClientCommands are the commands a STOMP client may send.
var ClientCommands = map[string]bool{
	frame.CONNECT: true, frame.STOMP: true, frame.SEND: true, frame.SUBSCRIBE: true,
	frame.UNSUBSCRIBE: true, frame.ACK: true, frame.NACK: true, frame.BEGIN: true,
	frame.COMMIT: true, frame.ABORT: true, frame.DISCONNECT: true,
}

// ServerCommands are the commands a STOMP server (the broker) may send.
var ServerCommands = map[string]bool{
	frame.CONNECTED: true, frame.MESSAGE: true, frame.RECEIPT: true, frame.ERROR: true,
}

// NewParser returns a parser for the given limits and accepted commands,
// starting at STOMP 1.2 escaping.
func NewParser(l Limits, commands map[string]bool) *Parser {
	return &Parser{limits: l, Version: V12, Commands: commands}
}

// Feed appends received bytes.
func (p *Parser) Feed(b []byte) {
	if p.off > 0 && p.off == len(p.buf) {
		p.buf, p.off = p.buf[:0], 0
	}
	p.buf = append(p.buf, b...)
}

// Buffered reports how many unparsed bytes are held.
func (p *Parser) Buffered() int { return len(p.buf) - p.off }

// Next returns the next complete frame, or nil when more input is needed.
// Heart-beat EOLs between frames are skipped.
func (p *Parser) Next() (*frame.Frame, error) {
	if p.off > 0 && p.off == len(p.buf) {
		p.buf, p.off = p.buf[:0], 0
	}
	b := p.buf[p.off:]
	i := 0
	for i < len(b) && (b[i] == '\n' || b[i] == '\r') {
		i++
	}
	p.off += i
	b = b[i:]
	if len(b) == 0 {
		return nil, nil
	}
	// Do not parse a partial frame again until the bytes that could change
	// the outcome have arrived: without this a frame arriving in k pieces
	// is parsed k times, headers and allocations included.
	switch p.wait {
	case waitLine:
		if len(b) <= p.limits.MaxHeaderBytes && len(b) <= p.limits.MaxFrameBytes && bytes.IndexByte(b[p.scanned:], '\n') < 0 {
			p.scanned = len(b)
			return nil, nil
		}
	case waitLen:
		if len(b) < p.need {
			return nil, nil
		}
	case waitNul:
		if len(b) <= p.limits.MaxFrameBytes && bytes.IndexByte(b[p.scanned:], 0) < 0 {
			p.scanned = len(b)
			return nil, nil
		}
	}
	p.wait = waitNone
	f, n, err := p.parse(b)
	if err != nil || f == nil {
		return nil, err
	}
	p.off += n
	return f, nil
}

// Frames iterates over the complete frames buffered so far, ending when more
// input is needed or at the first error (yielded with a nil frame). Each
// frame's Body is valid only until the loop body returns; Compact is called
// when the iteration ends.
func (p *Parser) Frames() iter.Seq2[*frame.Frame, error] {
	return func(yield func(*frame.Frame, error) bool) {
		defer p.Compact()
		for {
			f, err := p.Next()
			if err != nil {
				yield(nil, err)
				return
			}
			if f == nil || !yield(f, nil) {
				return
			}
		}
	}
}

// Compact moves unparsed bytes to the front of the buffer so it does not
// grow; call it when the caller no longer holds returned bodies.
func (p *Parser) Compact() {
	if p.off == 0 {
		return
	}
	n := copy(p.buf, p.buf[p.off:])
	p.buf, p.off = p.buf[:n], 0
}

func (p *Parser) parse(b []byte) (*frame.Frame, int, error) {
	max := p.limits.MaxFrameBytes
	// Command line.
	nl := bytes.IndexByte(b, '\n')
	if nl < 0 {
		if len(b) > p.limits.MaxHeaderBytes {
			return nil, 0, tooLarge("command line too long")
		}
		p.wait, p.scanned = waitLine, len(b)
		return nil, 0, nil
	}
	cmd := trimCR(b[:nl])
	command, ok := internCommand(cmd)
	if !ok || !p.Commands[command] {
		return nil, 0, badFrame("unknown or unexpected command " + strconv.Quote(truncate(string(cmd), 32)))
	}
	escaped := p.Version >= V11 && command != frame.CONNECT && command != frame.STOMP && command != frame.CONNECTED
	pos := nl + 1
	hdrStart := pos
	contentLength := -1
	spans := p.spans[:0] // per header line: name start, colon, line end (relative to hdrStart)
	for {
		rest := b[pos:]
		nl = bytes.IndexByte(rest, '\n')
		if nl < 0 {
			if len(rest) > p.limits.MaxHeaderBytes {
				return nil, 0, tooLarge("header line longer than " + strconv.Itoa(p.limits.MaxHeaderBytes) + " bytes")
			}
			if len(b) > max {
				return nil, 0, tooLarge("frame larger than " + strconv.Itoa(max) + " bytes")
			}
			p.wait, p.scanned = waitLine, len(b)
			return nil, 0, nil
		}
		if nl > p.limits.MaxHeaderBytes {
			return nil, 0, tooLarge("header line longer than " + strconv.Itoa(p.limits.MaxHeaderBytes) + " bytes")
		}
		line := trimCR(rest[:nl])
		lineStart := pos
		pos += nl + 1
		if pos > max {
			return nil, 0, tooLarge("frame larger than " + strconv.Itoa(max) + " bytes")
		}
		if len(line) == 0 {
			break
		}
		if len(spans)/3 >= p.limits.MaxHeaders {
			return nil, 0, tooLarge("more than " + strconv.Itoa(p.limits.MaxHeaders) + " headers")
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return nil, 0, badFrame("header line without a name and colon")
		}
		if bytes.IndexByte(line, 0) >= 0 {
			return nil, 0, badFrame("NUL byte in a header")
		}
		spans = append(spans, lineStart-hdrStart, lineStart-hdrStart+colon, lineStart-hdrStart+len(line))
	}
	p.spans = spans
	// One string for the whole header block: names and values are
	// substrings of it unless they need unescaping.
	block := string(b[hdrStart:pos])
	kv := p.kv[:0]
	for i := 0; i < len(spans); i += 3 {
		ns, c, e := spans[i], spans[i+1], spans[i+2]
		name, err := decodeHeaderIn(block, ns, c, escaped, true)
		if err != nil {
			return nil, 0, err
		}
		value, err := decodeHeaderIn(block, c+1, e, escaped, false)
		if err != nil {
			return nil, 0, err
		}
		dup := false
		for j := 0; j < len(kv); j += 2 {
			if kv[j] == name {
				dup = true // STOMP: the first occurrence wins; never relay the others
				break
			}
		}
		if dup {
			continue
		}
		if name == frame.ContentLength {
			n, err := strconv.Atoi(strings.TrimSpace(value))
			if err != nil || n < 0 {
				return nil, 0, badFrame("invalid content-length")
			}
			contentLength = n
		}
		kv = append(kv, name, value)
	}
	// Room for the headers the edge adds to a SEND (x-user-id,
	// amqp-message-id) without growing the slice again.
	kv = append(kv, "", "", "", "")
	fa := &frameAlloc{h: *frame.NewHeader(kv...)}
	fa.h.Del("") // the spare entries: real header names are never empty
	fa.f.Command = command
	fa.f.Header = &fa.h
	f := &fa.f
	p.kv = kv[:0]
	// Body.
	if contentLength >= 0 {
		if pos+contentLength > max {
			return nil, 0, tooLarge("frame larger than " + strconv.Itoa(max) + " bytes")
		}
		if len(b) < pos+contentLength+1 {
			p.wait, p.need = waitLen, pos+contentLength+1
			return nil, 0, nil
		}
		if b[pos+contentLength] != 0 {
			return nil, 0, badFrame("frame body not terminated by NUL after content-length bytes")
		}
		f.Body = b[pos : pos+contentLength]
		return f, pos + contentLength + 1, nil
	}
	end := bytes.IndexByte(b[pos:], 0)
	if end < 0 {
		if len(b) > max {
			return nil, 0, tooLarge("frame larger than " + strconv.Itoa(max) + " bytes")
		}
		p.wait, p.scanned = waitNul, len(b)
		return nil, 0, nil
	}
	if pos+end > max {
		return nil, 0, tooLarge("frame larger than " + strconv.Itoa(max) + " bytes")
	}
	f.Body = b[pos : pos+end]
	return f, pos + end + 1, nil
}

func trimCR(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\r' {
		return b[:n-1]
	}
	return b
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func internCommand(b []byte) (string, bool) {
	switch string(b) {
	case frame.SEND:
		return frame.SEND, true
	case frame.MESSAGE:
		return frame.MESSAGE, true
	case frame.ACK:
		return frame.ACK, true
	case frame.NACK:
		return frame.NACK, true
	case frame.RECEIPT:
		return frame.RECEIPT, true
	case frame.SUBSCRIBE:
		return frame.SUBSCRIBE, true
	case frame.UNSUBSCRIBE:
		return frame.UNSUBSCRIBE, true
	case frame.CONNECT:
		return frame.CONNECT, true
	case frame.STOMP:
		return frame.STOMP, true
	case frame.CONNECTED:
		return frame.CONNECTED, true
	case frame.BEGIN:
		return frame.BEGIN, true
	case frame.COMMIT:
		return frame.COMMIT, true
	case frame.ABORT:
		return frame.ABORT, true
	case frame.DISCONNECT:
		return frame.DISCONNECT, true
	case frame.ERROR:
		return frame.ERROR, true
	}
	return "", false
}

// commonHeaders avoids an allocation for header names seen on every frame.
var commonHeaders = func() map[string]string {
	m := map[string]string{}
	for _, h := range []string{
		frame.Destination, frame.ContentLength, frame.ContentType, frame.Receipt,
		frame.ReceiptId, frame.Subscription, frame.MessageId, frame.Id, frame.Ack,
		frame.Transaction, frame.Message, frame.HeartBeat, frame.Version, frame.Session,
		frame.Server, frame.AcceptVersion, frame.Host, frame.Login, frame.Passcode,
		"redelivered", "persistent", "priority", "reply-to", "expires", "timestamp",
		"correlation-id", "amqp-message-id", "x-user-id", "user-name", "x-error-code",
		"content-encoding", "x-seq", "x-message-id",
	} {
		m[h] = h
	}
	return m
}()

// decodeHeader undoes STOMP 1.1/1.2 escaping (\r \n \c \\). An undefined
// escape is a fatal protocol error (STOMP 1.2 §Value Encoding).
func decodeHeader(b []byte, escaped, isName bool) (string, error) {
	if isName {
		if s, ok := commonHeaders[string(b)]; ok {
			return s, nil
		}
	}
	if !escaped || bytes.IndexByte(b, '\\') < 0 {
		return string(b), nil
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		i++
		if i == len(b) {
			return "", badFrame("header ends in a lone backslash")
		}
		switch b[i] {
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 'c':
			out = append(out, ':')
		case '\\':
			out = append(out, '\\')
		default:
			return "", badFrame("undefined header escape \\" + string(b[i]))
		}
	}
	return string(out), nil
}

// AppendFrame encodes f for a peer speaking version v.
func AppendFrame(dst []byte, f *frame.Frame, v Version) []byte {
	dst = append(dst, f.Command...)
	dst = append(dst, '\n')
	escaped := v >= V11 && f.Command != frame.CONNECT && f.Command != frame.STOMP && f.Command != frame.CONNECTED
	if f.Header != nil {
		for i := 0; i < f.Header.Len(); i++ {
			k, val := f.Header.GetAt(i)
			dst = appendHeaderValue(dst, k, escaped, v)
			dst = append(dst, ':')
			dst = appendHeaderValue(dst, val, escaped, v)
			dst = append(dst, '\n')
		}
	}
	dst = append(dst, '\n')
	dst = append(dst, f.Body...)
	return append(dst, 0)
}

// AppendMessage encodes a MESSAGE from a STOMP 1.2 broker for a client
// speaking version v: below 1.2 the ack header is left out, as RabbitMQ
// does for such clients (they acknowledge by message-id, which RabbitMQ
// sets to the same value).
func AppendMessage(dst []byte, f *frame.Frame, v Version) []byte {
	if v >= V12 || f.Header.Get(frame.Ack) == "" {
		return AppendFrame(dst, f, v)
	}
	dst = append(dst, f.Command...)
	dst = append(dst, '\n')
	for i := 0; i < f.Header.Len(); i++ {
		k, val := f.Header.GetAt(i)
		if k == frame.Ack {
			continue
		}
		dst = appendHeaderValue(dst, k, v >= V11, v)
		dst = append(dst, ':')
		dst = appendHeaderValue(dst, val, v >= V11, v)
		dst = append(dst, '\n')
	}
	dst = append(dst, '\n')
	dst = append(dst, f.Body...)
	return append(dst, 0)
}

func appendHeaderValue(dst []byte, s string, escaped bool, v Version) []byte {
	if !needsEscape(s) {
		return append(dst, s...)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case !escaped && (c == '\n' || c == '\r'):
			// STOMP 1.0 and CONNECT frames cannot carry line breaks in a
			// header: drop them rather than let them end the header.
		case !escaped:
			dst = append(dst, c)
		case c == '\\':
			dst = append(dst, '\\', '\\')
		case c == '\n':
			dst = append(dst, '\\', 'n')
		case c == ':':
			dst = append(dst, '\\', 'c')
		case c == '\r' && v >= V12:
			dst = append(dst, '\\', 'r')
		case c == '\r':
			// STOMP 1.1 has no escape for CR: drop it.
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// needsEscape reports whether s holds a byte that appendHeaderValue must
// escape or drop; strings.ContainsAny builds a lookup table on every call.
func needsEscape(s string) bool {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\', '\r', '\n', ':':
			return true
		}
	}
	return false
}

// frameAlloc puts a parsed frame and its header in one allocation.
type frameAlloc struct {
	f frame.Frame
	h frame.Header
}

// decodeHeaderIn is decodeHeader for block[from:to], returning a substring
// of block (no copy) when nothing needs unescaping.
func decodeHeaderIn(block string, from, to int, escaped, isName bool) (string, error) {
	s := block[from:to]
	if isName {
		if c, ok := commonHeaders[s]; ok {
			return c, nil
		}
	}
	if !escaped || strings.IndexByte(s, '\\') < 0 {
		return s, nil
	}
	return decodeHeader([]byte(s), escaped, false)
}
