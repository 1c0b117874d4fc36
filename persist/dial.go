package persist

import (
	"errors"
	"fmt"
	"net/url"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stompgate/stompgate/config"
)

// dialNodes connects to the first broker node of cfg (PERSIST_AMQP_URLS,
// else PERSIST_AMQP_URL) that answers, trying them in list order on every
// (re)connect: the first is the preferred node, a reconnect after it is
// lost lands on the next one that is up. A node that refuses costs a
// round trip; one that does not answer at all costs the dial timeout on
// every reconnect until it is back (list it last, or remove it). It returns
// the connection, or every dial error joined.
func dialNodes(cfg config.Persister, ac amqp.Config) (*amqp.Connection, error) {
	urls := cfg.AMQPURLs
	if len(urls) == 0 {
		urls = []string{cfg.AMQPURL}
	}
	var errs []error
	for _, u := range urls {
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
