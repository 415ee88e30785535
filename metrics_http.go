package main

// The metrics_listen endpoint: GET /metrics in Prometheus's formats, from
// the daemon's own registry. Off unless configured. It changes nothing
// (every other method and path is refused), reads no request body, and
// bounds how long a scraper may hold a connection: docs/SECURITY.md says
// who can read it.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"
)

// Scrape bounds: a scrape is one small GET; a client slower than this is
// dropped, and at most metricsScrapesMax are served at once (more get
// 503).
const (
	metricsReadTimeout  = 5 * time.Second
	metricsWriteTimeout = 10 * time.Second
	metricsIdleTimeout  = 30 * time.Second
	metricsScrapesMax   = 4
	// metricsConnsMax bounds the connections held at once (idle ones
	// included); more wait in the listen backlog.
	metricsConnsMax = 16
)

// serveMetrics listens on addr ("" or "none": not at all) and serves the
// registry until ctx ends; spawn runs its goroutines (the daemon waits for
// them). A failure to listen is the daemon's failure to start.
func (o *observer) serveMetrics(ctx context.Context, addr string, log *slog.Logger, spawn func(func())) error {
	if addr == "" || addr == "none" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics_listen %s: %w", addr, err)
	}
	ln = netutil.LimitListener(ln, metricsConnsMax)
	h := promhttp.HandlerFor(o.reg, promhttp.HandlerOpts{
		MaxRequestsInFlight: metricsScrapesMax,
		Timeout:             metricsWriteTimeout / 2,
		ErrorHandling:       promhttp.ContinueOnError,
	})
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "metrics are read-only", http.StatusMethodNotAllowed)
			return
		}
		h.ServeHTTP(w, r)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: metricsReadTimeout, ReadTimeout: metricsReadTimeout,
		WriteTimeout: metricsWriteTimeout, IdleTimeout: metricsIdleTimeout, MaxHeaderBytes: 16 << 10,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	log.Info("serving metrics", "metrics_listen", ln.Addr().String())
	spawn(func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	spawn(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics server stopped", "err", err)
		}
	})
	return nil
}

// checkMetricsListen refuses a metrics_listen that is not host:port (or
// "" / "none").
func checkMetricsListen(addr string) error {
	if addr == "" || addr == "none" {
		return nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%q is not host:port or \"none\": %w", addr, err)
	}
	return nil
}
