package config

import (
	"strings"
	"testing"
	"time"
)

func envMap(m map[string]string) Getenv {
	return func(k string) string { return m[k] }
}

const secret = "0123456789abcdef0123456789abcdef"

func TestLoadEdgeDefaults(t *testing.T) {
	c, err := LoadEdge(envMap(map[string]string{"EDGE_JWT_HS256_SECRET": secret}))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"Listen", c.Listen, ":8080"},
		{"Heartbeat", c.Heartbeat, 25 * time.Second},
		{"MaxFrameBytes", c.MaxFrameBytes, 64 << 10},
		{"MaxHeaders", c.MaxHeaders, 64},
		{"MaxSubscriptions", c.MaxSubscriptions, 100},
		{"SendBufferBytes", c.SendBufferBytes, 512 << 10},
		{"SendTimeLimit", c.SendTimeLimit, 20 * time.Second},
		{"MaxSessionsPerUser", c.MaxSessionsPerUser, 20},
		{"TokenExpiryGrace", c.TokenExpiryGrace, 30 * time.Second},
		{"DrainDelay", c.DrainDelay, 5 * time.Second},
		{"DrainPeriod", c.DrainPeriod, 30 * time.Second},
		{"RateMaxWait", c.RateMaxWait, 2 * time.Second},
		{"JWTLeeway", c.JWTLeeway, 5 * time.Second},
		{"TokenCookie", c.TokenCookie, "access_token"},
		{"AllowMissingOrigin", c.AllowMissingOrigin, true},
		{"BrokerAddrs", strings.Join(c.BrokerAddrs, ","), "127.0.0.1:61613"},
		{"RateSession unlimited", c.RateSession.Unlimited(), true},
		{"SchedPolicy", c.SchedPolicy, "batch"},
		{"BrokerMode", c.BrokerMode, "shared"},
		{"BrokerLinks", c.BrokerLinks, 2},
		{"MaxDedicated", c.MaxDedicated, 500},
		{"BrokerLinger", c.BrokerLinger, 2 * time.Second},
		{"BrokerAMQPURLs", strings.Join(c.BrokerAMQPURLs, ","), "amqp://stompgate-edge:stompgate-edge@127.0.0.1:5672/stompgate"},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %v, want %v", ck.name, ck.got, ck.want)
		}
	}
}

func TestLoadEdgeErrorsNameTheVariable(t *testing.T) {
	tests := []struct {
		env  map[string]string
		want []string // every named variable must appear
	}{
		{map[string]string{}, []string{"EDGE_JWT_HS256_SECRET"}},
		{map[string]string{"EDGE_JWT_HS256_SECRET": "short"}, []string{"EDGE_JWT_HS256_SECRET", "32 bytes"}},
		{map[string]string{"EDGE_JWT_HS256_SECRET": secret, "EDGE_JWT_PUBLIC_KEYS": "/k.pem"}, []string{"EDGE_JWT_PUBLIC_KEYS"}},
		{map[string]string{"EDGE_JWT_HS256_SECRET": secret, "EDGE_ALLOWED_ORIGINS": "https://a.example, *"}, []string{"EDGE_ALLOWED_ORIGINS"}},
		{map[string]string{"EDGE_JWT_HS256_SECRET": secret, "EDGE_HEARTBEAT": "25"}, []string{"EDGE_HEARTBEAT", "duration"}},
		{map[string]string{"EDGE_JWT_HS256_SECRET": secret, "EDGE_MAX_FRAME_BYTES": "lots"}, []string{"EDGE_MAX_FRAME_BYTES"}},
		{map[string]string{"EDGE_JWT_HS256_SECRET": secret, "EDGE_RATE_USER": "-1"}, []string{"EDGE_RATE_USER"}},
		{map[string]string{"EDGE_JWT_HS256_SECRET": secret, "EDGE_ALLOW_MISSING_ORIGIN": "maybe"}, []string{"EDGE_ALLOW_MISSING_ORIGIN"}},
		{map[string]string{"EDGE_JWT_HS256_SECRET": secret, "EDGE_BROKER_ADDRS": "rabbit"}, []string{"EDGE_BROKER_ADDRS"}},
		{map[string]string{"EDGE_JWT_HS256_SECRET": secret, "EDGE_SEND_BUFFER_BYTES": "2KiB"}, []string{"EDGE_SEND_BUFFER_BYTES"}},
		{map[string]string{"EDGE_JWT_HS256_SECRET": secret, "EDGE_SCHED_POLICY": "fifo"}, []string{"EDGE_SCHED_POLICY", "batch"}},
		{map[string]string{"EDGE_JWT_JWKS_URL": "http://idp.example/jwks"}, []string{"EDGE_JWT_JWKS_URL", "https"}},
		{map[string]string{"EDGE_JWT_HS256_SECRET": secret, "EDGE_BROKER_MODE": "pooled", "EDGE_BROKER_LINKS": "0",
			"EDGE_MAX_DEDICATED": "-1", "EDGE_BROKER_AMQP_URLS": "http://u:secret@rabbit/", "EDGE_BROKER_LINGER": "2"},
			[]string{"EDGE_BROKER_MODE", "EDGE_BROKER_LINKS", "EDGE_MAX_DEDICATED", "EDGE_BROKER_AMQP_URLS", "EDGE_BROKER_LINGER"}},
		{map[string]string{"EDGE_JWT_HS256_SECRET": secret, "EDGE_BROKER_LINKS": "65"}, []string{"EDGE_BROKER_LINKS", "64"}},
		{map[string]string{"EDGE_JWT_HS256_SECRET": secret, "LOG_FORMAT": "xml", "EDGE_MAX_SUBSCRIPTIONS": "0"},
			[]string{"LOG_FORMAT", "EDGE_MAX_SUBSCRIPTIONS"}}, // reported together
	}
	for _, tt := range tests {
		_, err := LoadEdge(envMap(tt.env))
		if err == nil {
			t.Errorf("%v: no error", tt.env)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q does not mention %q", tt.env, err, w)
			}
		}
	}
}

func TestLoadEdgeParsesUnitsAndRates(t *testing.T) {
	c, err := LoadEdge(envMap(map[string]string{
		"EDGE_JWT_HS256_SECRET": secret, "EDGE_MAX_FRAME_BYTES": "128KiB", "EDGE_SEND_BUFFER_BYTES": "1MiB",
		"EDGE_RATE_SESSION": "50", "EDGE_ACCEPT_RATE": "0.5", "EDGE_HEARTBEAT": "500ms",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxFrameBytes != 128<<10 || c.SendBufferBytes != 1<<20 || c.Heartbeat != 500*time.Millisecond {
		t.Fatalf("units: %d %d %s", c.MaxFrameBytes, c.SendBufferBytes, c.Heartbeat)
	}
	if c.RateSession.PerSecond != 50 || c.RateSession.Burst != 100 || c.AcceptRate.Burst != 1 {
		t.Fatalf("rates: %+v %+v", c.RateSession, c.AcceptRate)
	}
}

func TestLoadEdgeAMQPURLs(t *testing.T) {
	c, err := LoadEdge(envMap(map[string]string{
		"EDGE_JWT_HS256_SECRET": secret, "EDGE_BROKER_ADDRS": "rabbit-a:61613,[::1]:61613",
		"EDGE_BROKER_LOGIN": "edge", "EDGE_BROKER_PASSCODE": "p@ss:w/rd", "EDGE_BROKER_VHOST": "/",
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := "amqp://edge:p%40ss%3Aw%2Frd@rabbit-a:5672/%2F,amqp://edge:p%40ss%3Aw%2Frd@[::1]:5672/%2F"
	if got := strings.Join(c.BrokerAMQPURLs, ","); got != want {
		t.Fatalf("derived URLs = %s, want %s", got, want)
	}
	c, err = LoadEdge(envMap(map[string]string{"EDGE_JWT_HS256_SECRET": secret, "EDGE_BROKER_AMQP_URLS": "amqps://a:b@r1/v, amqp://r2", "EDGE_BROKER_MODE": "Dedicated"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.BrokerAMQPURLs) != 2 || c.BrokerAMQPURLs[0] != "amqps://a:b@r1/v" || c.BrokerMode != "dedicated" {
		t.Fatalf("explicit URLs = %v, mode %q", c.BrokerAMQPURLs, c.BrokerMode)
	}
	_, err = LoadEdge(envMap(map[string]string{"EDGE_JWT_HS256_SECRET": secret, "EDGE_BROKER_AMQP_URLS": "http://u:hunter2@rabbit/"}))
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("a bad URL must be refused without its password: %v", err)
	}
}
