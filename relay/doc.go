// Package relay runs the edge's WebSocket sessions: it parses STOMP frames
// from browsers, applies the security boundary (package auth) and relays
// to RabbitMQ over one STOMP connection per session (a BrokerLink).
//
// # Goroutines of one session
//
//		 browser ──ws──▶ readLoop ──────────────▶ BrokerLink.Write/Flush ──tcp──▶ RabbitMQ
//		                  │ (HTTP handler goroutine: owns parser,              │
//		                  │  identity, permissions, subscriptions, limiter)    │
//		                  │                                                    │
//		 browser ◀──ws── writeLoop ◀── queue (bounded, bytes) ◀── brokerLoop ◀─┘
//		                  ▲                ▲                       (MESSAGE, RECEIPT, ERROR)
//		                  │                └── readLoop (CONNECTED, RECEIPT, ERROR)
//		                  └── hbSet, pongs  └── Server (drain, revoke), expiry timer: end()
//
//	  - readLoop is the only reader of the WebSocket and the only goroutine
//	    that changes session protocol state. It stops reading while the rate
//	    limiter makes it wait (backpressure).
//	  - writeLoop is the only writer of the WebSocket. It drains the whole
//	    queue into a buffer under gorilla's connection (bufConn) and flushes
//	    once per batch, with a write deadline of EDGE_SEND_TIME_LIMIT. It also
//	    sends heart-beats and pongs.
//	  - brokerLoop reads the broker link and enqueues re-encoded frames.
//	  - The queue is bounded by EDGE_SEND_BUFFER_BYTES: a producer that would
//	    overflow it ends the session with slow_consumer instead of waiting, so
//	    neither the broker reader nor any other session ever blocks on one
//	    browser.
//
// # Who closes what
//
// Any goroutine may call Session.end (or fail, which adds an ERROR frame);
// it runs once. end marks the session closing and wakes writeLoop, which
// writes what is queued, then the final ERROR frame, then a WebSocket close,
// flushes, and waits up to 2s for readLoop to see the client's close before
// closing the socket, so the final frames are read rather than lost to a TCP
// reset. readLoop returns when the socket closes; serve then closes the
// BrokerLink (the broker redelivers unacked messages), waits for brokerLoop,
// and releases the per-user slot and rate budget. A write that times out
// closes the socket at once (abort).
//
// Server owns the sessions: admission (EDGE_MAX_CONNECTIONS,
// EDGE_ACCEPT_RATE), readiness, the broker probe, Drain (spread closes with
// shutting_down) and Revoke.
package relay
