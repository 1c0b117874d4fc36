package relay

import "github.com/stompgate/stompgate/stomp"

// ERROR frame x-error-code values (SPEC §4). They are part of the external
// contract: clients branch on them.
const (
	CodeUnauthenticated      = "unauthenticated"
	CodeTokenExpired         = "token_expired"
	CodeRevoked              = "revoked"
	CodeForbidden            = "forbidden"
	CodeBadFrame             = stomp.CodeBadFrame
	CodeFrameTooLarge        = stomp.CodeFrameTooLarge
	CodeTooManySubscriptions = "too_many_subscriptions"
	CodeTooManySessions      = "too_many_sessions"
	CodeRateLimited          = "rate_limited"
	CodeSlowConsumer         = "slow_consumer"
	CodeBrokerUnavailable    = "broker_unavailable"
	CodeBrokerBusy           = "broker_busy"
	CodeShuttingDown         = "shutting_down"
	CodeBroker               = "broker"
)

// AllCodes lists every code, so metrics can be pre-registered at zero.
var AllCodes = []string{
	CodeUnauthenticated, CodeTokenExpired, CodeRevoked, CodeForbidden, CodeBadFrame,
	CodeFrameTooLarge, CodeTooManySubscriptions, CodeTooManySessions, CodeRateLimited,
	CodeSlowConsumer, CodeBrokerUnavailable, CodeBrokerBusy, CodeShuttingDown, CodeBroker,
}
