// Command edge is the stompgate WebSocket/STOMP edge: browsers speak STOMP
// over WebSocket to it, and it relays to RabbitMQ after checking who they
// are and what they may do. Configuration is by environment (README).
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
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/stompgate/stompgate/auth"
	"github.com/stompgate/stompgate/config"
	"github.com/stompgate/stompgate/history"
	"github.com/stompgate/stompgate/internal/backoff"
	"github.com/stompgate/stompgate/internal/pgdb"
	"github.com/stompgate/stompgate/internal/sched"
	"github.com/stompgate/stompgate/relay"
	"github.com/stompgate/stompgate/revocation"
	"github.com/stompgate/stompgate/web"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "edge:", err)
		os.Exit(1)
	}
}

// run starts the edge and blocks until ctx is cancelled, then drains.
// ready, when the listener is up, is reported on stdout as "listening on ADDR".
func run(ctx context.Context, _ []string, getenv func(string) string, stdout io.Writer) error {
	cfg, err := config.LoadEdge(getenv)
	if err != nil {
		return err
	}
	log := newLogger(cfg, stdout)
	sched.Use("EDGE_SCHED_POLICY", cfg.SchedPolicy, log)
	origins, err := auth.NewOriginPolicy(cfg.AllowedOrigins, cfg.AllowMissingOrigin)
	if err != nil {
		return fmt.Errorf("EDGE_ALLOWED_ORIGINS: %w", err)
	}
	verifier, err := auth.NewVerifierContext(ctx, auth.VerifierConfig{
		HS256Secret:    []byte(cfg.JWTSecret),
		PublicKeyFiles: cfg.JWTPublicKeys,
		JWKSURL:        cfg.JWKSURL,
		Issuer:         cfg.JWTIssuer,
		Audience:       cfg.JWTAudience,
		Leeway:         cfg.JWTLeeway,
		Logger:         log,
	}, time.Now)
	if err != nil {
		return fmt.Errorf("EDGE_JWT_*: %w", err)
	}
	defer verifier.Close()
	rules, err := auth.LoadRules(cfg.ACLFile)
	if err != nil {
		return fmt.Errorf("EDGE_ACL_FILE: %w", err)
	}
	reg := prometheus.NewRegistry()
	var (
		revocations relay.Revocations
		pool        *pgxpool.Pool
		replay      relay.Journal
	)
	if cfg.DatabaseURL != "" {
		store, p, stopStore, err := startRevocations(ctx, cfg.DatabaseURL, reg, log)
		if err != nil {
			return err
		}
		defer stopStore()
		revocations, pool, replay = store, p, history.Journal{Pool: p}
	} else {
		log.Warn("EDGE_DATABASE_URL not set: revocation and history are off")
	}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	brk, closeBroker, err := newBroker(cfg, reg, log)
	if err != nil {
		return fmt.Errorf("broker: %w", err)
	}
	defer closeBroker()
	srv := relay.NewServer(context.Background(), relay.Deps{
		Config:   cfg,
		Verifier: verifier,
		Origins:  origins,
		Broker:   brk,
		Metrics:  relay.NewMetrics(reg),
		Logger:   log,
		Version:  version,

		Rules:       rules,
		Revocations: revocations,
		Journal:     replay,
	})
	if store, ok := revocations.(*revocation.Store); ok {
		defer store.OnRevoke(srv)()
	}
	mux := http.NewServeMux()
	srv.Routes(mux)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	if pool != nil {
		mux.Handle("GET /api/history", history.NewHandler(pool, verifier, rules, history.Config{
			Revoked: func(id auth.Identity) bool { r, _ := revocations.IsRevoked(id.Subject, id.TokenID); return r },
			Log:     log,
		}))
	} else {
		mux.HandleFunc("GET /api/history", historyOff)
	}
	mux.Handle("GET /", web.Handler())

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("EDGE_LISTEN %s: %w", cfg.Listen, err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	probeCtx, stopProbe := context.WithCancel(context.Background())
	defer stopProbe()
	go srv.ProbeBroker(probeCtx, 5*time.Second)
	serveErr := make(chan error, 1)
	go func() {
		if cfg.TLSCert != "" {
			serveErr <- hs.ServeTLS(ln, cfg.TLSCert, cfg.TLSKey) // https and wss
			return
		}
		serveErr <- hs.Serve(ln)
	}()
	log.Info("edge listening", "addr", ln.Addr().String(), "tls", cfg.TLSCert != "", "brokers", strings.Join(cfg.BrokerAddrs, ","), "version", version)
	fmt.Fprintf(stdout, "listening on %s\n", ln.Addr())

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutdown requested; draining")
	drainCtx, cancel := context.WithTimeout(context.Background(), cfg.DrainDelay+cfg.DrainPeriod+10*time.Second)
	defer cancel()
	drainErr := srv.Drain(drainCtx)
	if err := hs.Shutdown(drainCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("http shutdown", "err", err)
	}
	stopProbe()
	log.Info("edge stopped")
	return drainErr
}

// startRevocations connects to Postgres, applies the migrations and follows
// stompgate_revocations. It waits up to 10s for the first load so that a
// revoked user cannot slip in during start; if the database is not
// reachable by then the edge starts anyway, reports "stale" in /readyz and
// keeps trying.
// The pool is shared with the history API and resume.
func startRevocations(ctx context.Context, url string, reg prometheus.Registerer, log *slog.Logger) (*revocation.Store, *pgxpool.Pool, func(), error) {
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("EDGE_DATABASE_URL: %w", err)
	}
	pcfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("EDGE_DATABASE_URL: %w", err)
	}
	store := revocation.NewStore(pool, revocation.Config{Logger: log})
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "stompgate_revocations_healthy",
			Help: "1 while the revocation list is in sync with Postgres; 0 while the last known list is in force."},
			func() float64 { return boolFloat(store.Healthy()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "stompgate_revocations_active",
			Help: "Subjects and token ids currently revoked."},
			func() float64 { st := store.Status(); return float64(st.Subjects + st.Tokens) }),
	)
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The database and the table first (revocation.Migrate), retried
		// with backoff while the database is unreachable.
		retry := backoff.Backoff{Min: 250 * time.Millisecond, Max: 15 * time.Second}
		for {
			mctx, mcancel := context.WithTimeout(runCtx, 10*time.Second)
			_, err := pgdb.Ensure(mctx, url)
			if err == nil {
				err = revocation.Migrate(mctx, pool)
			}
			mcancel()
			if err == nil {
				break
			}
			log.Warn("revocations: migrate failed; retrying", "err", err)
			if !retry.Sleep(runCtx) {
				return
			}
		}
		_ = store.Run(runCtx)
	}()
	select {
	case <-store.Ready():
		log.Info("revocations loaded", "subjects", store.Status().Subjects, "tokens", store.Status().Tokens)
	case <-time.After(10 * time.Second):
		log.Error("revocations: not loaded within 10s; starting with an empty list and retrying")
	case <-ctx.Done():
	}
	return store, pool, func() { cancel(); <-done; pool.Close() }, nil
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func newLogger(cfg config.Edge, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
