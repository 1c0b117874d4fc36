package auth

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxDestinationBytes caps the length of a destination (and of an ACL
// pattern).
const MaxDestinationBytes = 512

// ErrBadDestination is wrapped by every error of ParseDestination; the
// wrapping error says why. The relay answers it with ERROR forbidden.
var ErrBadDestination = errors.New("bad destination")

// Kind is the kind of a destination, from its prefix (SPEC §4, §5).
type Kind uint8

const (
	KindTopic       Kind = iota + 1 // /topic/<key>, and /exchange/amq.topic/<key> (the same thing in RabbitMQ)
	KindExchange                    // /exchange/<name>[/<key>] for every other exchange
	KindQueue                       // /queue/<name> (RabbitMQ declares it)
	KindAMQQueue                    // /amq/queue/<name> (an existing queue; a separate grant from /queue/)
	KindTempQueue                   // /temp-queue/<name> (scoped to the session's broker connection)
	KindReplyQueue                  // /reply-queue/<name>
	KindApp                         // /app/<key> (journaled, SPEC §6)
	KindUserQueue                   // /user/queue/<name>: the caller's own personal queue
	KindUser                        // /user/<S>/queue/<name>: subject S's personal queue
	KindEdgeRefresh                 // exactly /edge/refresh (SEND only: token refresh)
)

var kindNames = [...]string{
	KindTopic: "topic", KindExchange: "exchange", KindQueue: "queue", KindAMQQueue: "amq-queue",
	KindTempQueue: "temp-queue", KindReplyQueue: "reply-queue", KindApp: "app",
	KindUserQueue: "user-queue", KindUser: "user", KindEdgeRefresh: "edge-refresh",
}

func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", k)
}

// AMQPTopicExchange is the exchange behind /topic/ destinations.
const AMQPTopicExchange = "amq.topic"

// EdgeRefresh is the destination of token refresh SENDs (SPEC §3).
const EdgeRefresh = "/edge/refresh"

// Destination is a parsed, validated client destination. It is a value.
//
// Name is what follows the prefix: the routing key of /topic/, /app/ and
// /exchange/ (empty for a bare /exchange/<name>), or the queue name. It is
// made of non-empty '.'-separated segments and never contains '/'; a segment
// that is exactly "*" or "#" is a wildcard (see Wildcard).
type Destination struct {
	Raw      string // as the client sent it; this is what goes to the broker
	Kind     Kind
	Exchange string // KindExchange: the exchange name; KindTopic: "amq.topic"
	User     string // KindUser: the addressed subject S (any characters but controls)
	Name     string
}

// Segments returns Name split on '.' (nil for an empty Name).
func (d Destination) Segments() []string {
	if d.Name == "" {
		return nil
	}
	return strings.Split(d.Name, ".")
}

// Wildcard reports whether a segment of Name is "*" or "#". Permissions treat
// such a destination as the set of everything it could match, for every
// kind, even where RabbitMQ would read the name literally (a queue name):
// that is never more permissive.
func (d Destination) Wildcard() bool {
	for _, s := range d.Segments() {
		if s == "*" || s == "#" {
			return true
		}
	}
	return false
}

func badDest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadDestination, fmt.Sprintf(format, args...))
}

// ParseDestination validates a client destination. It refuses: an empty or
// over-long (MaxDestinationBytes) destination, invalid UTF-8, control
// characters (NUL, CR, LF, DEL, C1), unknown prefixes, empty '.'-segments
// (which also rules out ".."), a '/' inside a name or key, and any /edge/
// destination but exactly /edge/refresh. The error wraps ErrBadDestination.
func ParseDestination(s string) (Destination, error) {
	if s == "" {
		return Destination{}, badDest("empty")
	}
	if len(s) > MaxDestinationBytes {
		return Destination{}, badDest("longer than %d bytes", MaxDestinationBytes)
	}
	if err := checkText(s); err != nil {
		return Destination{}, err
	}
	return parseDest(s, false)
}

// checkText refuses invalid UTF-8 and control characters.
func checkText(s string) error {
	if why := textProblem(s); why != "" {
		return badDest("%s", why)
	}
	return nil
}

// textProblem says what makes s unsafe in a header or destination, or "".
func textProblem(s string) string {
	if !utf8.ValidString(s) {
		return "not valid UTF-8"
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return fmt.Sprintf("control character %U", r)
		}
	}
	return ""
}

var simplePrefixes = []struct {
	prefix string
	kind   Kind
}{
	{"/topic/", KindTopic},
	{"/queue/", KindQueue},
	{"/amq/queue/", KindAMQQueue},
	{"/temp-queue/", KindTempQueue},
	{"/reply-queue/", KindReplyQueue},
	{"/app/", KindApp},
}

// parseDest splits s structurally. With pattern set, "{sub}" may stand in
// names and the caller validates segments itself (wildcard rules differ).
func parseDest(s string, pattern bool) (Destination, error) {
	d := Destination{Raw: s}
	for _, p := range simplePrefixes {
		if strings.HasPrefix(s, p.prefix) {
			d.Kind, d.Name = p.kind, s[len(p.prefix):]
			if d.Kind == KindTopic {
				d.Exchange = AMQPTopicExchange
			}
			return d, checkName(d.Name, pattern)
		}
	}
	switch {
	case strings.HasPrefix(s, "/exchange/"):
		rest := s[len("/exchange/"):]
		name, key, hasKey := strings.Cut(rest, "/")
		if pattern && (name == "#" || name == "*") {
			// Grants over exchange names: /exchange/# is every exchange
			// with any key or none; /exchange/*/<key> any one exchange
			// with keys matching <key>, /exchange/* any bare exchange.
			if name == "#" && hasKey {
				return d, badDest("/exchange/# already covers every exchange and key; it takes no routing key")
			}
			if hasKey {
				if err := checkName(key, pattern); err != nil {
					return d, err
				}
			}
			d.Kind, d.Exchange, d.Name = KindExchange, name, key
			return d, nil
		}
		if err := checkExchangeName(name); err != nil {
			return d, err
		}
		if hasKey {
			if err := checkName(key, pattern); err != nil {
				return d, err
			}
		}
		d.Kind, d.Exchange, d.Name = KindExchange, name, key
		if name == AMQPTopicExchange {
			// The same routing as /topic/<key>: authorise it as such, so
			// /exchange/amq.topic/# cannot get around a /topic/ rule.
			d.Kind = KindTopic
		}
		return d, nil
	case strings.HasPrefix(s, "/user/"):
		rest := s[len("/user/"):]
		if own, ok := strings.CutPrefix(rest, "queue/"); ok && !strings.Contains(own, "/") {
			d.Kind, d.Name = KindUserQueue, own
			return d, checkName(own, pattern)
		}
		// /user/<S>/queue/<name>: S may hold any character, '/' and
		// "/queue/" included; <name> never holds '/', so the last "/queue/"
		// is the separator and the split is unambiguous.
		i := strings.LastIndex(rest, "/queue/")
		if i <= 0 {
			return d, badDest("a user destination is /user/queue/<name> or /user/<subject>/queue/<name>")
		}
		d.Kind, d.User, d.Name = KindUser, rest[:i], rest[i+len("/queue/"):]
		return d, checkName(d.Name, pattern)
	case strings.HasPrefix(s, "/edge/"):
		if s == EdgeRefresh && !pattern {
			d.Kind = KindEdgeRefresh
			return d, nil
		}
		return d, badDest("/edge/ is reserved")
	}
	return d, badDest("unknown prefix (use /topic/, /queue/, /exchange/, /amq/queue/, /temp-queue/, /reply-queue/, /app/ or /user/)")
}

// checkName validates '.'-separated segments. In a pattern, '*' and '#'
// inside a longer segment are refused ("room*" is a typo for "room.*"); in a
// destination they are literal characters, as in AMQP.
func checkName(name string, pattern bool) error {
	if name == "" {
		return badDest("empty name after the prefix")
	}
	if strings.Contains(name, "/") {
		return badDest("'/' inside a name or routing key")
	}
	for _, seg := range strings.Split(name, ".") {
		if seg == "" {
			return badDest("empty segment (\"..\", or a leading or trailing '.')")
		}
		if pattern && seg != "*" && seg != "#" && strings.ContainsAny(seg, "*#") {
			return badDest("wildcards must be whole segments: %q", seg)
		}
	}
	return nil
}

func checkExchangeName(name string) error {
	if name == "" {
		return badDest("empty exchange name")
	}
	for _, seg := range strings.Split(name, ".") {
		if seg == "" {
			return badDest("empty segment in exchange name")
		}
	}
	if strings.ContainsAny(name, "*#") {
		return badDest("wildcards are not allowed in an exchange name")
	}
	return nil
}
