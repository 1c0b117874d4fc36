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

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/stompgate/stompgate/auth"
	"github.com/stompgate/stompgate/config"
	"github.com/stompgate/stompgate/relay"
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
	origins, err := auth.NewOriginPolicy(cfg.AllowedOrigins, cfg.AllowMissingOrigin)
	if err != nil {
		return fmt.Errorf("EDGE_ALLOWED_ORIGINS: %w", err)
	}
	verifier, err := auth.NewVerifier(auth.VerifierConfig{
		HS256Secret:    []byte(cfg.JWTSecret),
		PublicKeyFiles: cfg.JWTPublicKeys,
		Issuer:         cfg.JWTIssuer,
		Audience:       cfg.JWTAudience,
		Leeway:         cfg.JWTLeeway,
	}, time.Now)
	if err != nil {
		return fmt.Errorf("EDGE_JWT_*: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv := relay.NewServer(context.Background(), relay.Deps{
		Config:   cfg,
		Verifier: verifier,
		Origins:  origins,
		Dialer: relay.NewBrokerDialer(relay.BrokerConfig{
			Addrs: cfg.BrokerAddrs, Login: cfg.BrokerLogin, Passcode: cfg.BrokerPasscode,
			Vhost: cfg.BrokerVhost, Heartbeat: cfg.BrokerHeartbeat, Timeout: cfg.BrokerTimeout,
			MaxFrameBytes: 16 << 20,
		}),
		Metrics: relay.NewMetrics(reg),
		Logger:  log,
		Now:     time.Now,
		Version: version,
	})
	mux := http.NewServeMux()
	srv.Routes(mux)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
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
	go func() { serveErr <- hs.Serve(ln) }()
	log.Info("edge listening", "addr", ln.Addr().String(), "brokers", strings.Join(cfg.BrokerAddrs, ","), "version", version)
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

func newLogger(cfg config.Edge, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
