package config

import (
	"strings"
	"testing"
	"time"
)

func mapenv(m map[string]string) Getenv { return func(k string) string { return m[k] } }

func TestLoadPersisterDefaults(t *testing.T) {
	c, err := LoadPersister(mapenv(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.AMQPURL != "amqp://stompgate-persister:stompgate-persister@127.0.0.1:5672/stompgate" ||
		c.DatabaseURL != "postgres://postgres@127.0.0.1:5432/stompgate?sslmode=disable" ||
		len(c.Bindings) != 1 || c.Bindings[0] != "#" ||
		c.Queue != "stompgate.archive" || c.DLX != "stompgate.dlx" || c.DLQ != "stompgate.archive.dlq" ||
		c.DeliveryLimit != 5 || c.BatchSize != 500 || c.BatchWait != 20*time.Millisecond ||
		c.WriteMode != WriteModeCopy || c.MetricsListen != ":9091" || c.LogFormat != "text" ||
		c.RetryMin != 100*time.Millisecond || c.RetryMax != 5*time.Second ||
		c.ShutdownTimeout != 30*time.Second || c.ConnectionName == "" || c.DBMaxConns != 4 || c.Writers != 2 ||
		c.SchedPolicy != "batch" {
		t.Fatalf("unexpected defaults: %+v", c)
	}
	if !c.Archive || !c.Journal || c.JournalExchange != "stompgate.ingest" || c.JournalQueue != "stompgate.ingest" ||
		c.JournalBatchSize != 500 || c.JournalPollInterval != 2*time.Millisecond || c.JournalScanInterval != 5*time.Second || c.JournalLockPoll != 250*time.Millisecond {
		t.Fatalf("unexpected journal defaults: %+v", c)
	}
}

func TestLoadPersisterValues(t *testing.T) {
	c, err := LoadPersister(mapenv(map[string]string{
		"PERSIST_BINDINGS":       " room.* , alerts.#,",
		"PERSIST_BATCH_SIZE":     "100",
		"PERSIST_BATCH_WAIT":     "5ms",
		"PERSIST_WRITE_MODE":     "INSERT",
		"PERSIST_QUEUE":          "q",
		"PERSIST_DLX":            "x",
		"PERSIST_DLQ":            "d",
		"LOG_FORMAT":             "json",
		"PERSIST_METRICS_LISTEN": "127.0.0.1:0",

		"PERSIST_ARCHIVE":               "false",
		"PERSIST_JOURNAL":               "true",
		"PERSIST_JOURNAL_EXCHANGE":      "my.ingest",
		"PERSIST_JOURNAL_QUEUE":         "my.ingest.q",
		"PERSIST_JOURNAL_BATCH_SIZE":    "50",
		"PERSIST_JOURNAL_POLL_INTERVAL": "3ms",
		"PERSIST_JOURNAL_SCAN_INTERVAL": "1s",
		"PERSIST_JOURNAL_LOCK_POLL":     "20ms",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.Bindings, "|") != "room.*|alerts.#" || c.BatchSize != 100 || c.BatchWait != 5*time.Millisecond ||
		c.WriteMode != WriteModeInsert || c.Queue != "q" || c.DLX != "x" || c.DLQ != "d" || c.LogFormat != "json" ||
		c.MetricsListen != "127.0.0.1:0" {
		t.Fatalf("unexpected: %+v", c)
	}
	if c.Archive || !c.Journal || c.JournalExchange != "my.ingest" || c.JournalQueue != "my.ingest.q" ||
		c.JournalBatchSize != 50 || c.JournalPollInterval != 3*time.Millisecond || c.JournalScanInterval != time.Second || c.JournalLockPoll != 20*time.Millisecond {
		t.Fatalf("unexpected journal values: %+v", c)
	}
}

func TestLoadPersisterErrors(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want []string
	}{
		{map[string]string{"PERSIST_BATCH_SIZE": "0"}, []string{"PERSIST_BATCH_SIZE"}},
		{map[string]string{"PERSIST_BATCH_SIZE": "100001"}, []string{"PERSIST_BATCH_SIZE"}},
		{map[string]string{"PERSIST_BATCH_SIZE": "many"}, []string{"PERSIST_BATCH_SIZE"}},
		{map[string]string{"PERSIST_BATCH_WAIT": "20"}, []string{"PERSIST_BATCH_WAIT"}},
		{map[string]string{"PERSIST_WRITE_MODE": "fast"}, []string{"PERSIST_WRITE_MODE"}},
		{map[string]string{"PERSIST_SCHED_POLICY": "rr"}, []string{"PERSIST_SCHED_POLICY"}},
		{map[string]string{"PERSIST_AMQP_URL": "http://x"}, []string{"PERSIST_AMQP_URL"}},
		{map[string]string{"PERSIST_AMQP_URL": "amqp://u:secret@h/v", "PERSIST_DATABASE_URL": "mysql://x/y"}, []string{"PERSIST_DATABASE_URL"}},
		{map[string]string{"PERSIST_DATABASE_URL": "postgres://h:5432/"}, []string{"PERSIST_DATABASE_URL"}},
		{map[string]string{"PERSIST_BINDINGS": " , "}, []string{"PERSIST_BINDINGS"}},
		{map[string]string{"PERSIST_QUEUE": "amq.x"}, []string{"PERSIST_QUEUE"}},
		{map[string]string{"PERSIST_DLQ": "stompgate.archive"}, []string{"PERSIST_DLQ"}},
		{map[string]string{"PERSIST_RETRY_MIN": "2s", "PERSIST_RETRY_MAX": "1s"}, []string{"PERSIST_RETRY_MAX"}},
		{map[string]string{"LOG_FORMAT": "xml"}, []string{"LOG_FORMAT"}},
		{map[string]string{"PERSIST_WRITERS": "17"}, []string{"PERSIST_WRITERS"}},
		{map[string]string{"PERSIST_WRITERS": "8", "PERSIST_DB_MAX_CONNS": "4"}, []string{"PERSIST_DB_MAX_CONNS"}},
		// The journal's settings.
		{map[string]string{"PERSIST_JOURNAL": "maybe"}, []string{"PERSIST_JOURNAL"}},
		{map[string]string{"PERSIST_ARCHIVE": "nope"}, []string{"PERSIST_ARCHIVE"}},
		{map[string]string{"PERSIST_JOURNAL": "false", "PERSIST_ARCHIVE": "false"}, []string{"PERSIST_JOURNAL", "PERSIST_ARCHIVE"}},
		{map[string]string{"PERSIST_JOURNAL_EXCHANGE": "amq.topic"}, []string{"PERSIST_JOURNAL_EXCHANGE"}},
		{map[string]string{"PERSIST_JOURNAL_QUEUE": "amq.q"}, []string{"PERSIST_JOURNAL_QUEUE"}},
		{map[string]string{"PERSIST_JOURNAL_QUEUE": "stompgate.archive"}, []string{"PERSIST_JOURNAL_QUEUE"}},
		{map[string]string{"PERSIST_JOURNAL_QUEUE": "stompgate.archive.dlq"}, []string{"PERSIST_JOURNAL_QUEUE"}},
		{map[string]string{"PERSIST_JOURNAL_BATCH_SIZE": "0"}, []string{"PERSIST_JOURNAL_BATCH_SIZE"}},
		{map[string]string{"PERSIST_JOURNAL_BATCH_SIZE": "10001"}, []string{"PERSIST_JOURNAL_BATCH_SIZE"}},
		{map[string]string{"PERSIST_JOURNAL_BATCH_SIZE": "lots"}, []string{"PERSIST_JOURNAL_BATCH_SIZE"}},
		{map[string]string{"PERSIST_JOURNAL_POLL_INTERVAL": "5"}, []string{"PERSIST_JOURNAL_POLL_INTERVAL"}},
		{map[string]string{"PERSIST_JOURNAL_POLL_INTERVAL": "500us"}, []string{"PERSIST_JOURNAL_POLL_INTERVAL"}},
		{map[string]string{"PERSIST_JOURNAL_SCAN_INTERVAL": "5"}, []string{"PERSIST_JOURNAL_SCAN_INTERVAL"}},
		{map[string]string{"PERSIST_JOURNAL_SCAN_INTERVAL": "1ms"}, []string{"PERSIST_JOURNAL_SCAN_INTERVAL"}},
		{map[string]string{"PERSIST_JOURNAL_LOCK_POLL": "0s"}, []string{"PERSIST_JOURNAL_LOCK_POLL"}},
		{map[string]string{"PERSIST_JOURNAL_LOCK_POLL": "soon"}, []string{"PERSIST_JOURNAL_LOCK_POLL"}},
		// Every problem is reported together.
		{map[string]string{"PERSIST_BATCH_SIZE": "-1", "PERSIST_WRITE_MODE": "x", "PERSIST_DELIVERY_LIMIT": "0"},
			[]string{"PERSIST_BATCH_SIZE", "PERSIST_WRITE_MODE", "PERSIST_DELIVERY_LIMIT"}},
	} {
		_, err := LoadPersister(mapenv(tc.env))
		if err == nil {
			t.Errorf("%v: no error", tc.env)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q does not name %s", tc.env, err, w)
			}
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("%v: error leaks a password: %q", tc.env, err)
		}
	}
}

func TestLoadPersisterAMQPURLs(t *testing.T) {
	c, err := LoadPersister(mapenv(map[string]string{"PERSIST_AMQP_URL": "amqp://u:p@one/v"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.AMQPURLs) != 1 || c.AMQPURLs[0] != "amqp://u:p@one/v" {
		t.Fatalf("AMQPURLs from PERSIST_AMQP_URL = %v", c.AMQPURLs)
	}
	c, err = LoadPersister(mapenv(map[string]string{"PERSIST_AMQP_URLS": "amqp://u:p@r1:5672/v, amqps://u:p@r2/v,amqp://u:p@r3/v"}))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.AMQPURLs, ","); got != "amqp://u:p@r1:5672/v,amqps://u:p@r2/v,amqp://u:p@r3/v" {
		t.Fatalf("AMQPURLs = %s", got)
	}
	_, err = LoadPersister(mapenv(map[string]string{"PERSIST_AMQP_URLS": "amqp://u:p@r1/v,http://u:secret@r2/v"}))
	if err == nil || !strings.Contains(err.Error(), "PERSIST_AMQP_URLS") || strings.Contains(err.Error(), "secret") {
		t.Fatalf("bad URL in the list: %v", err)
	}
}
