// Package stompws is a STOMP-over-WebSocket client: the one the tests and
// stompload share. It dials with gorilla/websocket, speaks the stomp codec,
// and is built to be cheap per message so that a load generator built on it
// measures the server, not itself:
//
//   - Writes are coalesced. Send, WriteFrame and WriteMessage queue whole
//     WebSocket messages in a buffer under gorilla's connection; Flush hands
//     everything queued to the socket in one write. (gorilla alone makes one
//     system call per message whatever its buffer size.) Options.AutoFlush
//     flushes after every write instead, for tests that want that.
//   - Reads need no goroutine per frame. ReadLoop calls a function on the
//     reading goroutine for each frame, with the frame's body still in the
//     parser's buffer, and calls onDrained once everything received so far
//     has been handled, just before it waits on the socket again: the place
//     to release credits or flush once per batch rather than once per frame.
//     Forward is the channel-based form for tests.
//
// A Conn has one writing goroutine (Send, WriteFrame, WriteMessage,
// WriteHeartBeat, Flush, SetWriteDeadline, Disconnect) and one reading
// goroutine (ReadFrame, ReadLoop, Forward, SetReadDeadline). Connect and
// Subscribe both write and read: call them before the two goroutines start,
// or from a goroutine that is, for the moment, both. Close may be called
// from any goroutine at any time.
package stompws
