package auth

import (
	"errors"
	"strings"
	"testing"

	"github.com/go-stomp/stomp/v3/frame"
)

func TestCheckHeaders(t *testing.T) {
	p := perms(t, "alice", "",
		"send:/topic/room.*", "subscribe:/topic/room.*", "subscribe:/queue/replies",
		"subscribe:/queue/durable.*", "declare:/queue/durable.*", "subscribe:/topic/news.#", "declare:/topic/news.#")
	tests := []struct {
		name    string
		dest    string
		headers []string
		bad     string   // substring of the error, "" = passes
		gone    []string // headers that must be removed
		kept    []string // headers that must stay
	}{
		{name: "plain send", dest: "/topic/room.1", headers: []string{"content-type", "text/plain", "receipt", "1"},
			kept: []string{"content-type", "receipt"}},
		{name: "persistent is not declaring", dest: "/topic/room.1", headers: []string{"persistent", "true"}, kept: []string{"persistent"}},
		{name: "consumer headers are not declaring", dest: "/queue/replies",
			headers: []string{"ack", "client-individual", "prefetch-count", "10", "id", "s1", "x-stream-offset", "first"},
			kept:    []string{"ack", "prefetch-count", "id", "x-stream-offset"}},
		{name: "user-id and app-id dropped", dest: "/topic/room.1",
			headers: []string{"user-id", "guest", "app-id", "billing", "User-Id", "x", "APP-ID", "y"},
			gone:    []string{"user-id", "app-id", "User-Id", "APP-ID"}},
		{name: "durable without declare", dest: "/topic/room.1", headers: []string{"durable", "true"}, bad: `"durable"`},
		{name: "auto-delete without declare", dest: "/topic/room.1", headers: []string{"auto-delete", "false"}, bad: `"auto-delete"`},
		{name: "exclusive", dest: "/topic/room.1", headers: []string{"exclusive", "true"}, bad: `"exclusive"`},
		{name: "x-queue-name", dest: "/topic/room.1", headers: []string{"x-queue-name", "stolen"}, bad: `"x-queue-name"`},
		{name: "x-queue-type", dest: "/topic/room.1", headers: []string{"x-queue-type", "quorum"}, bad: `"x-queue-type"`},
		{name: "x-max-length", dest: "/topic/room.1", headers: []string{"x-max-length", "1"}, bad: `"x-max-length"`},
		{name: "x-max-length-bytes", dest: "/topic/room.1", headers: []string{"x-max-length-bytes", "1"}, bad: `"x-max-length-bytes"`},
		{name: "x-max-priority", dest: "/topic/room.1", headers: []string{"x-max-priority", "9"}, bad: `"x-max-priority"`},
		{name: "x-message-ttl", dest: "/topic/room.1", headers: []string{"x-message-ttl", "1"}, bad: `"x-message-ttl"`},
		{name: "x-expires", dest: "/topic/room.1", headers: []string{"x-expires", "1"}, bad: `"x-expires"`},
		{name: "x-overflow", dest: "/topic/room.1", headers: []string{"x-overflow", "reject-publish"}, bad: `"x-overflow"`},
		{name: "x-dead-letter-exchange", dest: "/topic/room.1", headers: []string{"x-dead-letter-exchange", "x"}, bad: `"x-dead-letter-exchange"`},
		{name: "x-dead-letter-routing-key", dest: "/topic/room.1", headers: []string{"x-dead-letter-routing-key", "x"}, bad: `"x-dead-letter-routing-key"`},
		{name: "x-single-active-consumer", dest: "/topic/room.1", headers: []string{"x-single-active-consumer", "true"}, bad: `"x-single-active-consumer"`},
		{name: "case does not help", dest: "/topic/room.1", headers: []string{"Durable", "true"}, bad: `"Durable"`},
		{name: "declare on another destination", dest: "/queue/replies", headers: []string{"durable", "true"}, bad: "declare"},
		{name: "declare granted", dest: "/queue/durable.a",
			headers: []string{"durable", "true", "auto-delete", "false", "x-queue-type", "quorum", "x-dead-letter-exchange", "dlx"},
			kept:    []string{"durable", "auto-delete", "x-queue-type", "x-dead-letter-exchange"}},
		{name: "durable topic subscription granted", dest: "/topic/news.eu",
			headers: []string{"durable", "true", "auto-delete", "false", "x-queue-name", "alice-news"}, kept: []string{"x-queue-name"}},
		{name: "reply-to temp-queue", dest: "/topic/room.1", headers: []string{"reply-to", "/temp-queue/r"}, kept: []string{"reply-to"}},
		{name: "reply-to subscribable", dest: "/topic/room.1", headers: []string{"reply-to", "/queue/replies"}, kept: []string{"reply-to"}},
		{name: "reply-to not subscribable", dest: "/topic/room.1", headers: []string{"reply-to", "/queue/someone-else"}, bad: "reply-to"},
		{name: "reply-to wildcard wider than grant", dest: "/topic/room.1", headers: []string{"reply-to", "/topic/#"}, bad: "reply-to"},
		{name: "reply-to invalid", dest: "/topic/room.1", headers: []string{"reply-to", "/etc/passwd"}, bad: "reply-to"},
		{name: "reply-to edge", dest: "/topic/room.1", headers: []string{"reply-to", "/edge/refresh"}, bad: "reply-to"},
		{name: "reply-to twice", dest: "/topic/room.1", headers: []string{"reply-to", "/temp-queue/r", "reply-to", "/queue/someone-else"}, bad: "repeated reply-to"},
		{name: "destination twice", dest: "/topic/room.1", headers: []string{"destination", "/topic/room.1", "destination", "/queue/admin"}, bad: "repeated destination"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := ParseDestination(tt.dest)
			if err != nil {
				t.Fatal(err)
			}
			h := frame.NewHeader(tt.headers...)
			err = CheckHeaders(h, d, p)
			if tt.bad != "" {
				if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), tt.bad) {
					t.Fatalf("got %v, want forbidden naming %s", err, tt.bad)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range tt.gone {
				if _, ok := h.Contains(k); ok {
					t.Errorf("%s kept", k)
				}
			}
			for _, k := range tt.kept {
				if _, ok := h.Contains(k); !ok {
					t.Errorf("%s dropped", k)
				}
			}
		})
	}
}

func TestStampIdentity(t *testing.T) {
	h := frame.NewHeader("destination", "/topic/a", "x-user-id", "mallory", "X-User-Id", "mallory2",
		"x-user-id", "mallory3", "user-id", "guest", "content-type", "text/plain")
	StampIdentity(h, "alice")
	if got := h.GetAll("x-user-id"); len(got) != 1 || got[0] != "alice" {
		t.Fatalf("x-user-id %q", got)
	}
	if _, ok := h.Contains("X-User-Id"); ok {
		t.Fatal("X-User-Id kept")
	}
	if _, ok := h.Contains("user-id"); ok {
		t.Fatal("user-id kept")
	}
	id := h.Get("amqp-message-id")
	if len(id) != 26 {
		t.Fatalf("no ULID message id: %q", id)
	}
	if h.Get("content-type") != "text/plain" || h.Get("destination") != "/topic/a" {
		t.Fatal("other headers lost")
	}

	h = frame.NewHeader("amqp-message-id", "", "amqp-message-id", "client-1", "amqp-message-id", "client-2")
	StampIdentity(h, "alice")
	if got := h.GetAll("amqp-message-id"); len(got) != 1 || got[0] != "client-1" {
		t.Fatalf("amqp-message-id %q", got)
	}
	// Stamping twice is harmless.
	StampIdentity(h, "alice")
	if got := h.GetAll("x-user-id"); len(got) != 1 {
		t.Fatalf("x-user-id %q", got)
	}
}

func TestDeclaring(t *testing.T) {
	for name, want := range map[string]bool{
		"durable": true, "DURABLE": true, "x-max-length-bytes": true, "x-dead-letter-strategy": true,
		"persistent": false, "ack": false, "id": false, "x-stream-offset": false, "prefetch-count": false,
		"content-type": false, "x-custom": false,
	} {
		if Declaring(name) != want {
			t.Errorf("Declaring(%q) = %v", name, !want)
		}
	}
}
