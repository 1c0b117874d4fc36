// Package stomp is the STOMP 1.0/1.1/1.2 wire codec shared by the edge, the
// load generator and the tests: a Parser that turns a byte stream in any
// split into frames under Limits (with a Frames iterator), and AppendFrame,
// which encodes a frame for a peer's version. Frames are go-stomp's
// frame.Frame values.
//
// A Parser belongs to one goroutine; AppendFrame is a pure function.
package stomp
