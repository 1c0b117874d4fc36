package persist

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stompgate/stompgate/config"
)

// dialNodes connects to one of the broker nodes of cfg (PERSIST_AMQP_URLS,
// else PERSIST_AMQP_URL), trying each in turn from a random one, so that a
// reconnect after a node is lost lands on a node that is up and several
// persisters spread over a cluster. It returns the first connection made,
// or every dial error joined.
func dialNodes(cfg config.Persister, ac amqp.Config) (*amqp.Connection, error) {
	urls := cfg.AMQPURLs
	if len(urls) == 0 {
		urls = []string{cfg.AMQPURL}
	}
	start := rand.IntN(len(urls))
	var errs []error
	for i := range urls {
		u := urls[(start+i)%len(urls)]
		conn, err := amqp.DialConfig(u, ac)
		if err == nil {
			return conn, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", redacted(u), err))
	}
	return nil, errors.Join(errs...)
}

// redacted is u without its password, for errors and logs.
func redacted(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	return p.Redacted()
}
