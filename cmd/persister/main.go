// Command persister archives RabbitMQ traffic in Postgres (SPEC §6): it
// consumes the quorum queue stompgate.archive (bound to amq.topic), writes
// batches in one transaction each, acks only after COMMIT, skips duplicates
// by (sender, message id) and dead-letters messages the database refuses.
// It also runs the journal (docs/JOURNAL.md): /app/ traffic from the
// stompgate.ingest queue and stompgate_publish rows get a gapless seq per
// stream, are committed, then broadcast to amq.topic; of several
// persisters one leads the journal and the others stand by.
// Configuration is read from PERSIST_* environment variables (see
// docs/PERSISTER.md); metrics are served on PERSIST_METRICS_LISTEN.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stompgate/stompgate/config"
	"github.com/stompgate/stompgate/internal/sched"
	"github.com/stompgate/stompgate/persist"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Getenv, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "persister:", err)
		os.Exit(1)
	}
}

// startTimeout bounds each start-up step that talks to Postgres.
const startTimeout = 30 * time.Second

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	cfg, err := config.LoadPersister(getenv)
	if err != nil {
		return err
	}
	var handler slog.Handler = slog.NewTextHandler(stdout, nil)
	if cfg.LogFormat == "json" {
		handler = slog.NewJSONHandler(stdout, nil)
	}
	log := slog.New(handler)
	sched.Use("PERSIST_SCHED_POLICY", cfg.SchedPolicy, log)

	ectx, cancel := context.WithTimeout(ctx, startTimeout)
	created, err := persist.EnsureDatabase(ectx, cfg.DatabaseURL)
	cancel()
	if created {
		log.Info("database created")
	}
	if err != nil {
		return err
	}
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("PERSIST_DATABASE_URL: %w", err)
	}
	pcfg.MaxConns = int32(cfg.DBMaxConns)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return fmt.Errorf("postgres pool: %w", err)
	}
	defer pool.Close()
	mctx, cancel := context.WithTimeout(ctx, startTimeout)
	err = persist.Migrate(mctx, pool)
	cancel()
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := persist.NewMetrics(reg, pool)

	if cfg.MetricsListen != "" {
		ln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return fmt.Errorf("PERSIST_METRICS_LISTEN: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, "ok\n")
		})
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		served := make(chan error, 1) // Serve's result, read once after Shutdown
		go func() { served <- srv.Serve(ln) }()
		defer func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
			<-served
		}()
		log.Info("metrics listening", "addr", ln.Addr().String())
	}

	// The archive and the journal run side by side; the first to fail for
	// good stops the other.
	rctx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	if cfg.Archive {
		a := persist.NewArchiver(cfg, persist.NewWriter(pool, cfg.WriteMode), metrics, log)
		log.Info("archive starting", "queue", cfg.Queue, "batch_size", cfg.BatchSize,
			"batch_wait", cfg.BatchWait, "write_mode", cfg.WriteMode)
		wg.Go(func() {
			if errs[0] = a.Run(rctx); errs[0] != nil {
				stopAll()
			}
		})
	}
	if cfg.Journal {
		jn := persist.NewJournal(cfg, persist.NewJournalMetrics(reg), log)
		log.Info("journal starting", "queue", cfg.JournalQueue, "exchange", cfg.JournalExchange,
			"batch_size", cfg.JournalBatchSize)
		wg.Go(func() {
			if errs[1] = jn.Run(rctx); errs[1] != nil {
				stopAll()
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	log.Info("persister stopped")
	return nil
}
