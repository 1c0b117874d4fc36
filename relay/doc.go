// Package relay runs the edge's WebSocket sessions: it parses STOMP frames
// from browsers, applies the security boundary (package auth) and hands
// typed operations to the broker side (package relay/broker).
//
// # Where each job lives
//
//	server.go    Server: HTTP routes, admission (EDGE_MAX_CONNECTIONS,
//	             EDGE_ACCEPT_RATE), readiness, the broker probe, Drain, Revoke
//	session.go   Session: the STOMP state machine, on the reader goroutine;
//	             the subscription table; sessionSink (what the broker pushes)
//	guard.go     Guard: SPEC §3's check order over auth, pure
//	outbox.go    Outbox: the only writer of the client connection
//	wire.go      wire: the client transport (wsWire: gorilla + bufConn)
//	sockjs.go    /sockjs/: SockJS sessions on the same Session (sockjsWire)
//	resume.go    x-resume-after: replay from the journal, then live
//	close.go     CloseReason: codes, metric labels, close codes, log levels
//	clock.go     Clock: expiry and timers, injectable for tests
//	trace.go     the opt-in, redacted frame trace (EDGE_LOG_FRAMES)
//	broker/      the seam: Broker, Session (typed ops), Sink (pushed events)
//	broker/stompconn  one STOMP connection to RabbitMQ per session
//	broker/memory     in-memory double with RabbitMQ's semantics (tests)
//	broker/amqplink   shared AMQP links with local fan-out (the default)
//
// # Goroutines of one session
//
//		browser ──ws──▶ reader (HTTP handler goroutine) ──typed ops──▶ broker.Session ──▶ RabbitMQ
//		                 │ owns: parser, credentials, subscriptions,       │
//		                 │ limiter, broker.Session; runs Guard             │ stompconn reader
//		                 │ (edge frames: CONNECTED, RECEIPT)               │ goroutine
//		                 ▼                                                 ▼
//		browser ◀──ws── Outbox ◀──────── Enqueue + Flush ◀──── sessionSink.Deliver/Receipt/Idle
//		                 ▲ Run goroutine: pongs, heart-beats,       ▲
//		                 │ close, what in-place flushes left        └── Server: Drain, Revoke (close)
//		                 └── expiry timer (Clock): close
//
//	  - The reader is the only goroutine that reads the WebSocket and the
//	    only one that changes session state or calls broker.Session
//	    operations. It stops reading while the rate limiter makes it wait
//	    (backpressure), and flushes the broker side before it may block on
//	    the socket (bufConn.beforeRead).
//	  - The Outbox alone writes the socket. One goroutine at a time holds its
//	    writer role (a flag under Outbox.mu) and writes outside the lock:
//	    either the Outbox's own Run goroutine or, in place, a producer that
//	    calls Flush while nobody writes (the broker reader at Sink.Idle, the
//	    session reader after an edge frame). Everything queued is written as
//	    one batch into bufConn and leaves in one syscall: each frame is
//	    appended there as one WebSocket message by the edge itself (one
//	    frame per message, text unless broker.Frame.Binary), without
//	    gorilla's per-message lock, channel and socket deadline; gorilla
//	    writes only pongs and the close. bufConn's buffer and the reader's
//	    message buffer come from pools and go back between batches, so an
//	    idle session holds neither.
//	  - Flush points: Sink.Idle (the broker side read everything it had),
//	    Session.send (an edge-made frame), and Run when woken. An in-place
//	    flush waits at most 1ms for a full socket and leaves the rest to Run,
//	    which waits up to EDGE_SEND_TIME_LIMIT; past that the socket is closed
//	    (slow_consumer).
//	  - The queue is bounded by EDGE_SEND_BUFFER_BYTES: a producer that would
//	    overflow it ends the session with slow_consumer instead of waiting, so
//	    neither the broker reader nor any other session ever blocks on one
//	    browser.
//
// # Who closes what
//
// Any goroutine may call Session.close (reason, message); it runs once,
// encodes the final ERROR frame if the reason has a code, and calls
// Outbox.Close. Run then writes what is queued (dropped for slow or silent
// clients), the ERROR, a WebSocket close frame, and waits up to 2s for the
// reader to see the client's close before closing the socket, so the final
// frames are read rather than lost to a TCP reset. The reader returns when
// the socket closes; serve then closes the broker.Session (the broker
// redelivers unacked messages), stops the session's timers and releases the
// per-user slot and rate budget. A write that fails or times out marks the
// session closing and closes the socket at once.
//
// # Locks
//
// Server.mu (sessions, drain registration) → userSlots.mu. Outbox.mu is a
// leaf: nothing else is taken while it is held, and sinks and hooks are
// called outside it. The session itself has no lock: its cross-goroutine
// state is atomics (version, credentials, closeAt, the DISCONNECT
// receipt). stompconn has one lock per connection (its write buffer); the
// memory broker one for everything, with sinks called under it (they
// never block).
package relay
