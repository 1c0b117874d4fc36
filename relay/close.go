package relay

import (
	"github.com/gorilla/websocket"
)

// CloseReason is why a session ended. It is mapped once, here, to the
// x-error-code of the final ERROR frame (if any), the metrics label, the
// WebSocket close code and the log level.
type CloseReason uint8

const (
	// Ends without an ERROR frame.
	ReasonClientClosed     CloseReason = iota + 1 // the client closed the socket
	ReasonClientDisconnect                        // DISCONNECT (its RECEIPT, if asked, went first)
	ReasonHeartbeatTimeout                        // silent for 1.5× the negotiated heart-beat
	ReasonSendTimeout                             // the socket took no write within EDGE_SEND_TIME_LIMIT
	ReasonWriteFailed                             // the socket failed a write
	ReasonReadFailed                              // the socket failed a read (not a close)

	// Ends with an ERROR frame carrying the reason's code.
	ReasonUnauthenticated
	ReasonTokenExpired
	ReasonRevoked
	ReasonForbidden
	ReasonBadFrame
	ReasonFrameTooLarge
	ReasonTooManySubscriptions
	ReasonTooManySessions
	ReasonRateLimited
	ReasonSlowConsumer
	ReasonBrokerUnavailable
	ReasonBrokerBusy
	ReasonShuttingDown
	ReasonBroker // the broker's own ERROR, relayed
)

var reasonCodes = [...]string{
	ReasonUnauthenticated:      CodeUnauthenticated,
	ReasonTokenExpired:         CodeTokenExpired,
	ReasonRevoked:              CodeRevoked,
	ReasonForbidden:            CodeForbidden,
	ReasonBadFrame:             CodeBadFrame,
	ReasonFrameTooLarge:        CodeFrameTooLarge,
	ReasonTooManySubscriptions: CodeTooManySubscriptions,
	ReasonTooManySessions:      CodeTooManySessions,
	ReasonRateLimited:          CodeRateLimited,
	ReasonSlowConsumer:         CodeSlowConsumer,
	ReasonBrokerUnavailable:    CodeBrokerUnavailable,
	ReasonBrokerBusy:           CodeBrokerBusy,
	ReasonShuttingDown:         CodeShuttingDown,
	ReasonBroker:               CodeBroker,
}

// Code is the x-error-code of the ERROR frame that announces the close, or
// "" for a close without one.
func (r CloseReason) Code() string {
	if int(r) < len(reasonCodes) {
		return reasonCodes[r]
	}
	return ""
}

// String is the metrics label (stompgate_sessions_closed_total{reason}):
// the x-error-code, or a name for closes without an ERROR frame. A socket
// that stopped taking writes counts as a slow consumer.
func (r CloseReason) String() string {
	switch r {
	case ReasonClientClosed:
		return "client_closed"
	case ReasonClientDisconnect:
		return "client_disconnect"
	case ReasonHeartbeatTimeout:
		return "heart-beat_timeout"
	case ReasonSendTimeout:
		return CodeSlowConsumer
	case ReasonWriteFailed, ReasonReadFailed:
		return "other"
	}
	if c := r.Code(); c != "" {
		return c
	}
	return "other"
}

// WSCode is the WebSocket close code sent with the close frame.
func (r CloseReason) WSCode() int {
	switch r {
	case ReasonShuttingDown:
		return websocket.CloseGoingAway
	case ReasonBrokerUnavailable, ReasonBrokerBusy, ReasonBroker:
		return websocket.CloseInternalServerErr
	}
	if r.Code() != "" {
		return websocket.ClosePolicyViolation
	}
	return websocket.CloseNormalClosure
}

// Expected reports closes that are the normal end of a session; they log
// at Debug, the rest at Info.
func (r CloseReason) Expected() bool {
	return r == ReasonClientClosed || r == ReasonClientDisconnect || r == ReasonShuttingDown
}

// reasonForCode maps an x-error-code back to its reason (for errors that
// carry only a code, such as a parser's FrameError).
func reasonForCode(code string) CloseReason {
	for r, c := range reasonCodes {
		if c == code && c != "" {
			return CloseReason(r)
		}
	}
	return ReasonBadFrame
}

// allReasons lists every reason, for tests and pre-registered metrics.
func allReasons() []CloseReason {
	out := make([]CloseReason, 0, int(ReasonBroker))
	for r := ReasonClientClosed; r <= ReasonBroker; r++ {
		out = append(out, r)
	}
	return out
}
