package amqplink

import (
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stompgate/stompgate/stomp"
)

// This file is RabbitMQ's STOMP adapter mapping (rabbitmq_stomp,
// rabbit_stomp_util.erl: message_properties/1 for SEND, message_headers/1
// and headers_post_process/1 for MESSAGE), so a frame is the same whether it
// rides a shared link or a dedicated STOMP connection.

// propertyHeaders are the STOMP headers that become AMQP properties on a
// SEND (user_header/1 is false for them); every other header of the frame,
// receipt and content-length included, becomes a longstr AMQP header, as
// RabbitMQ does.
var propertyHeaders = map[string]bool{
	"content-type": true, "content-encoding": true, "persistent": true, "priority": true,
	"correlation-id": true, "reply-to": true, "expiration": true, "amqp-message-id": true,
	"timestamp": true, "type": true, "user-id": true, "app-id": true, frame.Destination: true,
}

// publishing maps a SEND's headers and body to the AMQP message RabbitMQ's
// STOMP adapter would publish. The first occurrence of a header wins
// (STOMP 1.2 §Repeated Header Entries).
//
// Known difference: amqp091-go sends priority only when it is not 0, so a
// SEND with priority:0 arrives without a priority property.
func publishing(h *frame.Header, body []byte) amqp.Publishing {
	p := amqp.Publishing{Body: body}
	var tbl amqp.Table
	seen := make(map[string]bool, h.Len())
	for i := 0; i < h.Len(); i++ {
		k, v := h.GetAt(i)
		if seen[k] {
			continue
		}
		seen[k] = true
		if !propertyHeaders[k] {
			if tbl == nil {
				tbl = make(amqp.Table, h.Len())
			}
			tbl[k] = v
			continue
		}
		switch k {
		case "content-type":
			p.ContentType = v
		case "content-encoding":
			p.ContentEncoding = v
		case "persistent":
			if v == "true" {
				p.DeliveryMode = amqp.Persistent
			}
		case "priority":
			if n, err := strconv.ParseUint(v, 10, 8); err == nil {
				p.Priority = uint8(n)
			}
		case "correlation-id":
			p.CorrelationId = v
		case "reply-to":
			p.ReplyTo = v
		case "expiration":
			p.Expiration = v
		case "amqp-message-id":
			p.MessageId = v
		case "timestamp":
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				p.Timestamp = time.Unix(n, 0)
			}
		case "type":
			p.Type = v
		case "user-id":
			p.UserId = v
		case "app-id":
			p.AppId = v
		}
	}
	p.Headers = tbl
	return p
}

// destPrefixes are the destinations RabbitMQ leaves alone in a reply-to
// (rabbit_routing_util:dest_prefixes/0); any other reply-to gets
// /reply-queue/ in front.
var destPrefixes = []string{"/exchange/", "/topic/", "/queue/", "/amq/queue/", "/temp-queue/", "/reply-queue/"}

// appendMessageHeaders appends, as STOMP header lines encoded for v, what
// RabbitMQ's STOMP adapter makes of a delivery's properties: the custom
// headers of type longstr, signedint and long (others are dropped, as
// RabbitMQ does), then the properties in RabbitMQ's order. amqp091-go hands
// headers over as a map, so custom headers come sorted by name (RabbitMQ
// keeps the table's order); content-length is left out, the caller appends
// the real one.
func appendMessageHeaders(dst []byte, d *amqp.Delivery, v stomp.Version) []byte {
	if len(d.Headers) > 0 {
		keys := make([]string, 0, len(d.Headers))
		for k := range d.Headers {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if k == frame.ContentLength {
				continue
			}
			var s string
			switch x := d.Headers[k].(type) {
			case string:
				s = x
			case int32:
				s = strconv.FormatInt(int64(x), 10)
			case int64:
				s = strconv.FormatInt(x, 10)
			default:
				continue
			}
			dst = appendHeader(dst, k, s, v)
		}
	}
	str := func(k, s string) {
		if s != "" {
			dst = appendHeader(dst, k, s, v)
		}
	}
	str("app-id", d.AppId)
	str("user-id", d.UserId)
	str("type", d.Type)
	if !d.Timestamp.IsZero() {
		dst = appendHeader(dst, "timestamp", strconv.FormatInt(d.Timestamp.Unix(), 10), v)
	}
	str("amqp-message-id", d.MessageId)
	str("expiration", d.Expiration)
	if d.ReplyTo != "" {
		r := d.ReplyTo
		if !hasAnyPrefix(r, destPrefixes) {
			r = "/reply-queue/" + r
		}
		dst = appendHeader(dst, "reply-to", r, v)
	}
	str("correlation-id", d.CorrelationId)
	if d.Priority != 0 {
		dst = appendHeader(dst, "priority", strconv.Itoa(int(d.Priority)), v)
	}
	if d.DeliveryMode == amqp.Persistent {
		dst = appendHeader(dst, "persistent", "true", v)
	}
	str("content-encoding", d.ContentEncoding)
	str("content-type", d.ContentType)
	return dst
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// appendHeader appends "k:v\n" encoded for a client speaking v.
func appendHeader(dst []byte, k, val string, v stomp.Version) []byte {
	dst = appendValue(dst, k, v)
	dst = append(dst, ':')
	dst = appendValue(dst, val, v)
	return append(dst, '\n')
}

// appendValue escapes a header name or value as stomp.AppendFrame does for
// a MESSAGE: 1.1 and 1.2 escape '\\', '\n', ':' ('\r' too in 1.2, dropped
// in 1.1); 1.0 has no escapes and drops line breaks.
func appendValue(dst []byte, s string, v stomp.Version) []byte {
	clean := true
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\', '\r', '\n', ':':
			clean = false
		}
	}
	if clean {
		return append(dst, s...)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case v < stomp.V11 && (c == '\n' || c == '\r'):
		case v < stomp.V11:
			dst = append(dst, c)
		case c == '\\':
			dst = append(dst, '\\', '\\')
		case c == '\n':
			dst = append(dst, '\\', 'n')
		case c == ':':
			dst = append(dst, '\\', 'c')
		case c == '\r' && v >= stomp.V12:
			dst = append(dst, '\\', 'r')
		case c == '\r':
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// formatDestination is the destination header RabbitMQ gives a delivery
// from exchange with routing key (format_destination/2).
func formatDestination(exchange, key string) string {
	switch {
	case exchange == "":
		return "/queue/" + escapeName(key)
	case exchange == "amq.topic":
		return "/topic/" + escapeName(key)
	case key == "":
		return "/exchange/" + escapeName(exchange)
	}
	return "/exchange/" + escapeName(exchange) + "/" + escapeName(key)
}

// escapeName percent-encodes '/', '%' and bytes outside 32..127 as
// RabbitMQ's escape/1 does.
func escapeName(s string) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '/' || c == '%' || c < 32 || c > 127 {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '/' || c == '%' || c < 32 || c > 127 {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// unescapeName undoes the %2F that RabbitMQ decodes in a destination's
// names (parse_content/1 unescapes only that).
func unescapeName(s string) string { return strings.ReplaceAll(s, "%2F", "/") }

// route resolves a /topic/ or /exchange/ destination to an exchange and a
// routing (or binding) key, as rabbit_routing_util:parse_routing/2 does;
// ok is false for every other destination and for /exchange/ without a
// name.
func route(dest string) (exchange, key string, ok bool) {
	switch {
	case strings.HasPrefix(dest, "/topic/"):
		return "amq.topic", unescapeName(dest[len("/topic/"):]), true
	case strings.HasPrefix(dest, "/exchange/"):
		rest := dest[len("/exchange/"):]
		ex, k, _ := strings.Cut(rest, "/")
		if ex == "" || strings.Contains(k, "/") {
			return "", "", false
		}
		return unescapeName(ex), unescapeName(k), true
	}
	return "", "", false
}
