package relay

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stompgate/stompgate/stomp"
)

// Metrics are the edge's Prometheus series (SPEC §8). One Metrics belongs to
// one Server; tests build their own registry.
type Metrics struct {
	SessionsActive    prometheus.Gauge
	SessionsTotal     prometheus.Counter
	SessionsClosed    *prometheus.CounterVec // by reason: an x-error-code, client_disconnect, heart-beat_timeout, client_closed, other
	FramesIn          *prometheus.CounterVec // by command, client → edge
	FramesOut         *prometheus.CounterVec // by command, edge → client
	Rejections        *prometheus.CounterVec // by x-error-code
	OutboundBytes     prometheus.Gauge       // bytes queued to clients, all sessions
	BrokerConnections prometheus.Gauge
	BrokerUp          prometheus.Gauge
	HTTPRefused       *prometheus.CounterVec // upgrades refused before the WebSocket, by reason
	RelayLatency      prometheus.Histogram   // broker frame read → written to the client socket
	ResumeReplayed    prometheus.Counter     // journal messages replayed for x-resume-after
	ResumeGaps        prometheus.Counter     // resumes answered with x-resume:gap

	framesIn  map[string]prometheus.Counter
	framesOut map[string]prometheus.Counter
}

// NewMetrics registers the edge's series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		SessionsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "stompgate_sessions_active", Help: "Open client sessions (after the WebSocket upgrade)."}),
		SessionsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "stompgate_sessions_total", Help: "Client sessions opened since start."}),
		SessionsClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stompgate_sessions_closed_total", Help: "Client sessions ended, by reason."}, []string{"reason"}),
		FramesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stompgate_frames_in_total", Help: "STOMP frames received from clients, by command."}, []string{"command"}),
		FramesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stompgate_frames_out_total", Help: "STOMP frames sent to clients, by command."}, []string{"command"}),
		Rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stompgate_rejections_total", Help: "ERROR frames sent to clients, by x-error-code."}, []string{"code"}),
		OutboundBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "stompgate_outbound_buffer_bytes", Help: "Bytes queued for clients and not yet written, all sessions."}),
		BrokerConnections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "stompgate_broker_connections", Help: "Open STOMP connections from this edge to the broker."}),
		BrokerUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "stompgate_broker_up", Help: "1 when the last broker probe succeeded."}),
		HTTPRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "stompgate_upgrades_refused_total", Help: "WebSocket upgrades refused with an HTTP status, by reason."}, []string{"reason"}),
		RelayLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "stompgate_relay_latency_seconds", Help: "Time from reading a broker frame to writing it to the client socket; observed once per session per broker read batch (its frames share it).",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16)}),
		ResumeReplayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "stompgate_resume_replayed_total", Help: "Journal messages replayed from Postgres for x-resume-after."}),
		ResumeGaps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "stompgate_resume_gaps_total", Help: "Resumes answered with x-resume:gap (over EDGE_RESUME_MAX or history gone)."}),
		framesIn:  map[string]prometheus.Counter{},
		framesOut: map[string]prometheus.Counter{},
	}
	reg.MustRegister(m.SessionsActive, m.SessionsTotal, m.SessionsClosed, m.FramesIn, m.FramesOut, m.Rejections,
		m.OutboundBytes, m.BrokerConnections, m.BrokerUp, m.HTTPRefused, m.RelayLatency, m.ResumeReplayed, m.ResumeGaps)
	// Pre-resolve label values so the per-frame path does no map lookups
	// under the vector's lock and every series exists from the start.
	for c := range stomp.ClientCommands {
		m.framesIn[c] = m.FramesIn.WithLabelValues(c)
	}
	for c := range stomp.ServerCommands {
		m.framesOut[c] = m.FramesOut.WithLabelValues(c)
	}
	for _, c := range AllCodes {
		m.Rejections.WithLabelValues(c)
	}
	return m
}

func (m *Metrics) frameIn(cmd string) {
	if c, ok := m.framesIn[cmd]; ok {
		c.Inc()
	}
}

func (m *Metrics) frameOut(cmd string) { m.framesOutN(cmd, 1) }

// framesOutN counts n frames of cmd sent ("" or n == 0: nothing).
func (m *Metrics) framesOutN(cmd string, n int) {
	if n == 0 {
		return
	}
	if c, ok := m.framesOut[cmd]; ok {
		c.Add(float64(n))
	}
}
