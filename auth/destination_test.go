package auth

import (
	"errors"
	"strings"
	"testing"
)

func TestParseDestination(t *testing.T) {
	tests := []struct {
		in       string
		kind     Kind
		exchange string
		user     string
		name     string
		bad      string // substring of the error; "" = valid
	}{
		{in: "/topic/room.1", kind: KindTopic, exchange: "amq.topic", name: "room.1"},
		{in: "/topic/room.*", kind: KindTopic, exchange: "amq.topic", name: "room.*"},
		{in: "/topic/#", kind: KindTopic, exchange: "amq.topic", name: "#"},
		{in: "/exchange/amq.topic/room.1", kind: KindTopic, exchange: "amq.topic", name: "room.1"},
		{in: "/exchange/amq.topic/#", kind: KindTopic, exchange: "amq.topic", name: "#"},
		{in: "/exchange/orders/eu.new", kind: KindExchange, exchange: "orders", name: "eu.new"},
		{in: "/exchange/orders", kind: KindExchange, exchange: "orders"},
		{in: "/queue/jobs", kind: KindQueue, name: "jobs"},
		{in: "/amq/queue/jobs", kind: KindAMQQueue, name: "jobs"},
		{in: "/temp-queue/replies", kind: KindTempQueue, name: "replies"},
		{in: "/reply-queue/amq.gen-abc", kind: KindReplyQueue, name: "amq.gen-abc"},
		{in: "/app/chat.room1", kind: KindApp, name: "chat.room1"},
		{in: "/user/queue/inbox", kind: KindUserQueue, name: "inbox"},
		{in: "/user/alice/queue/inbox", kind: KindUser, user: "alice", name: "inbox"},
		{in: "/user/a.b#*/queue/inbox", kind: KindUser, user: "a.b#*", name: "inbox"},
		{in: "/user/x/queue/y/queue/inbox", kind: KindUser, user: "x/queue/y", name: "inbox"},
		{in: "/user/queue/queue/inbox", kind: KindUser, user: "queue", name: "inbox"},
		{in: "/user/ü ß/queue/inbox", kind: KindUser, user: "ü ß", name: "inbox"},
		{in: "/edge/refresh", kind: KindEdgeRefresh},
		{in: "/topic/room*", kind: KindTopic, exchange: "amq.topic", name: "room*"}, // literal in AMQP

		{in: "", bad: "empty"},
		{in: "/topic/", bad: "empty name"},
		{in: "/topic/a..b", bad: "empty segment"},
		{in: "/topic/..", bad: "empty segment"},
		{in: "/topic/.a", bad: "empty segment"},
		{in: "/topic/a.", bad: "empty segment"},
		{in: "/queue/../etc", bad: "'/'"},
		{in: "/queue/a/b", bad: "'/'"},
		{in: "/topic/a\x00b", bad: "control"},
		{in: "/topic/a\nb", bad: "control"},
		{in: "/topic/a\rb", bad: "control"},
		{in: "/topic/a\x7fb", bad: "control"},
		{in: "/topic/a\u0085b", bad: "control"},
		{in: "/topic/\xff", bad: "UTF-8"},
		{in: "/Topic/a", bad: "unknown prefix"},
		{in: "topic/a", bad: "unknown prefix"},
		{in: "/tmp/a", bad: "unknown prefix"},
		{in: "/edge/other", bad: "reserved"},
		{in: "/edge/refresh/x", bad: "reserved"},
		{in: "/exchange/", bad: "empty exchange"},
		{in: "/exchange//key", bad: "empty exchange"},
		{in: "/exchange/a..b/key", bad: "empty segment"},
		{in: "/exchange/*/key", bad: "wildcards"},
		{in: "/exchange/x/", bad: "empty name"},
		{in: "/exchange/x/a/b", bad: "'/'"},
		{in: "/user/queue/", bad: "empty name"},
		{in: "/user/alice/queue/", bad: "empty name"},
		{in: "/user//queue/x", bad: "user destination"},
		{in: "/user/alice/inbox", bad: "user destination"},
		{in: "/user/queue/a/b", bad: "user destination"},
		{in: "/topic/" + strings.Repeat("a", MaxDestinationBytes), bad: "longer"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			d, err := ParseDestination(tt.in)
			if tt.bad != "" {
				if err == nil || !errors.Is(err, ErrBadDestination) || !strings.Contains(err.Error(), tt.bad) {
					t.Fatalf("got %+v, %v; want error with %q", d, err, tt.bad)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Kind != tt.kind || d.Exchange != tt.exchange || d.User != tt.user || d.Name != tt.name || d.Raw != tt.in {
				t.Fatalf("got %+v", d)
			}
		})
	}
}

func TestDestinationWildcard(t *testing.T) {
	for in, want := range map[string]bool{
		"/topic/a.b": false, "/topic/a.*": true, "/topic/#": true, "/topic/a*": false, "/exchange/x": false,
	} {
		d, err := ParseDestination(in)
		if err != nil {
			t.Fatal(err)
		}
		if d.Wildcard() != want {
			t.Errorf("%s: Wildcard() = %v", in, !want)
		}
	}
}

func FuzzParseDestination(f *testing.F) {
	for _, s := range []string{"/topic/a.b", "/user/a/queue/b", "/exchange/amq.topic/#", "/edge/refresh", "/queue/a..b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDestination(s)
		if err != nil {
			return
		}
		if d.Raw != s || d.Kind == 0 || len(s) > MaxDestinationBytes || textProblem(s) != "" {
			t.Fatalf("accepted %q as %+v", s, d)
		}
		for _, seg := range d.Segments() {
			if seg == "" || strings.Contains(seg, "/") {
				t.Fatalf("%q: bad segment in %+v", s, d)
			}
		}
	})
}
