package main

import (
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stompgate/stompgate/config"
	"github.com/stompgate/stompgate/relay/broker"
	"github.com/stompgate/stompgate/relay/broker/amqplink"
	"github.com/stompgate/stompgate/relay/broker/stompconn"
)

// newBroker builds the edge's broker side: shared AMQP links with a
// dedicated STOMP connection per session only where a frame needs one
// (EDGE_BROKER_MODE=shared, the default; docs/LINKS.md), or one STOMP
// connection per session (dedicated). The returned func closes the links;
// call it after the sessions are drained.
func newBroker(cfg config.Edge, reg prometheus.Registerer, log *slog.Logger) (broker.Broker, func(), error) {
	dedicated := stompconn.New(stompconn.Config{
		Addrs: cfg.BrokerAddrs, Login: cfg.BrokerLogin, Passcode: cfg.BrokerPasscode,
		Vhost: cfg.BrokerVhost, Heartbeat: cfg.BrokerHeartbeat, Timeout: cfg.BrokerTimeout,
		MaxFrameBytes: cfg.BrokerMaxFrameBytes,
	})
	if cfg.BrokerMode == "dedicated" {
		return dedicated, func() {}, nil
	}
	host, _ := os.Hostname()
	b, err := amqplink.New(amqplink.Config{
		URLs: cfg.BrokerAMQPURLs, Links: cfg.BrokerLinks, MaxDedicated: cfg.MaxDedicated, Dedicated: dedicated,
		Name: host, Linger: cfg.BrokerLinger, Timeout: cfg.BrokerTimeout, Heartbeat: cfg.BrokerHeartbeat,
		MaxFrameBytes: cfg.BrokerMaxFrameBytes, Registerer: reg, Logger: log,
	})
	if err != nil {
		return nil, nil, err
	}
	return b, func() { b.Close() }, nil
}
