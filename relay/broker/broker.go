// Package broker is the seam between a relay session and the message
// broker. A session calls typed operations on its Session; the broker side
// pushes deliveries, receipts and losses into the session's Sink. The
// session never sees how the broker is reached: today one STOMP connection
// per session (package stompconn); a few shared AMQP links per edge with
// a dedicated STOMP connection only where a frame needs one (package
// amqplink, the default); an in-memory double with RabbitMQ's semantics
// for tests (package memory).
//
// # Concurrency
//
// Broker.Open and Broker.Probe may be called from any goroutine. A
// Session's operations are called from one goroutine at a time (the relay
// session's reader); Close may be called from any goroutine, more than
// once. Sink methods may be called from any goroutine and must not block.
package broker

import (
	"context"
	"errors"
	"time"
	"unicode/utf8"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/stompgate/stompgate/stomp"
)

// Broker opens the broker side of sessions. One Broker serves every
// session of an edge.
type Broker interface {
	// Open attaches a session; what the broker sends it goes to sink. It
	// fails with an error wrapping ErrUnavailable when the broker cannot be
	// reached, or ErrBusy when the broker-side capacity is used up.
	Open(ctx context.Context, info SessionInfo, sink Sink) (Session, error)
	// Probe reports whether the broker is reachable now (readiness).
	Probe(ctx context.Context) error
}

// SessionInfo describes the client a Session serves.
type SessionInfo struct {
	ID      string        // the edge's session id
	Subject string        // the authenticated subject (for naming, never for trust)
	Version stomp.Version // the client's STOMP version: deliveries are encoded for it
}

// Sink receives what the broker sends to one session. Every method may be
// called from any goroutine and returns without waiting on the client.
type Sink interface {
	// Deliver hands over one frame (MESSAGE) already encoded for the
	// client's version. The Frame's bytes may be shared with other
	// sessions: nobody writes to them afterwards.
	Deliver(f Frame)
	// Receipt reports that the broker confirmed the operation that asked
	// for receipt id.
	Receipt(id string)
	// Lost ends the session: err wraps ErrUnavailable (the broker went
	// away), ErrFrameTooLarge (it sent more than the limit), or is an
	// *Error (the broker refused something; relayed to the client).
	Lost(err error)
	// Idle says the broker side has handed over everything it has read so
	// far: a flush point for the session's socket.
	Idle()
}

// Frame is an encoded frame for a client.
type Frame struct {
	Data    []byte
	Command string // frame.MESSAGE, ...: for metrics
	// Binary says Data is not valid UTF-8, so it must go out as a binary
	// WebSocket message. Decided once per encoding, not per session.
	Binary bool
	// Received is when the broker side read it (relay latency).
	Received time.Time
}

// NewFrame is a Frame of data with Binary decided.
func NewFrame(data []byte, command string, received time.Time) Frame {
	return Frame{Data: data, Command: command, Binary: !utf8.Valid(data), Received: received}
}

// Session is one client session's broker side. Operations may buffer;
// Flush sends what is buffered. Receipt fields, when set, ask for a
// Sink.Receipt once the broker has done the operation.
type Session interface {
	Send(m Message) error
	Subscribe(s Subscription) error
	Unsubscribe(id, receipt string) error
	Ack(a Ack) error
	Begin(tx, receipt string) error
	Commit(tx, receipt string) error
	Abort(tx, receipt string) error
	// Disconnect asks the broker to end the session cleanly; with a
	// receipt, the Sink gets it once everything before was processed.
	Disconnect(receipt string) error
	Flush() error
	// Close ends the session at once; the broker redelivers what it had
	// not seen acknowledged.
	Close() error
}

// Message is a SEND. Header holds every header of the client's frame after
// the edge's checks and rewrites (destination, identity, receipt,
// transaction included); implementations that speak STOMP forward it as
// is, others map it.
type Message struct {
	Destination string
	// Route, when set, is where the message goes instead of what
	// Destination would mean to RabbitMQ (the journal, user destinations).
	Route       *Route
	Receipt     string
	Transaction string
	Header      *frame.Header
	Body        []byte
}

// Route is an exchange and routing key the edge resolved a destination
// to. Key may hold any character (a user destination's subject).
type Route struct {
	Exchange string
	Key      string
}

// The exchanges behind the edge's own destinations (rabbitmq/definitions.json).
const (
	JournalExchange = "stompgate.ingest" // /app/<key> → routing key <key> (SPEC §6)
	UserExchange    = "stompgate.user"   // /user/<S>/queue/<name> → routing key <S>/<name> (SPEC §5)
)

// AckMode is a subscription's ack header.
type AckMode string

const (
	AckAuto             AckMode = "auto"
	AckClient           AckMode = "client"
	AckClientIndividual AckMode = "client-individual"
)

// ParseAckMode maps a SUBSCRIBE's ack header ("" is auto).
func ParseAckMode(s string) (AckMode, bool) {
	switch AckMode(s) {
	case "", AckAuto:
		return AckAuto, true
	case AckClient, AckClientIndividual:
		return AckMode(s), true
	}
	return "", false
}

// Subscription is a SUBSCRIBE; Header is the client's frame's headers
// (id, destination and ack included).
type Subscription struct {
	ID          string
	Destination string // as the client sent it; MESSAGEs carry it back
	// Route, when set, is the binding to subscribe instead (user
	// destinations): a queue of the session's own bound to Route.Exchange
	// with Route.Key.
	Route   *Route
	Ack     AckMode
	Receipt string
	Header  *frame.Header
}

// Ack is an ACK, or a NACK when Nack is set. ID is the broker's message
// id of the delivery (the MESSAGE's ack header in STOMP 1.2, message-id
// before): the relay translates the client's version.
type Ack struct {
	ID           string
	Subscription string
	Transaction  string
	Receipt      string
	Nack         bool
}

// ErrUnavailable wraps every failure to reach or keep the broker.
var ErrUnavailable = errors.New("broker unavailable")

// ErrBusy is returned by Open when the edge may not open more broker-side
// state (a connection cap).
var ErrBusy = errors.New("broker capacity used up")

// ErrFrameTooLarge ends a session whose broker sent a frame over the
// configured limit; it says nothing about the broker's health.
var ErrFrameTooLarge = errors.New("frame from the broker over the limit")

// ErrRefused is an operation this broker side cannot carry out for the
// client (the message says why); the session ends with ERROR forbidden.
var ErrRefused = errors.New("refused")

// Error is an ERROR frame from the broker, relayed to the client with
// x-error-code broker.
type Error struct {
	Message     string
	ContentType string
	ReceiptID   string
	Body        []byte
}

func (e *Error) Error() string { return "broker error: " + e.Message }
