// Package faults inflicts faults on a running stompgate (issue 10) and
// checks that nothing is lost and nothing stays stuck: a broker restart
// mid-traffic, a database outage, a deploy drain, a reconnect storm,
// half-open zombie clients and two edges sharing one broker.
//
// Everything lives in the tests. They run the real binaries (cmd/edge,
// cmd/persister, built once by TestMain) or an in-process edge wired like
// cmd/edge, against the real RabbitMQ and Postgres: the shared local ones
// in a vhost or database of their own, or private servers the test starts,
// stops and removes (a RabbitMQ node, a Postgres cluster). Nothing here
// stops the shared services.
//
// The short scenarios run in `make test`; the long ones (database outage,
// 2,000-client drain and reconnect storm) only with STOMPGATE_FAULTS=1
// (`make faults`). docs/RELIABILITY.md records each with its command and
// result.
package faults
