// Package persist archives what flows through RabbitMQ in Postgres (SPEC
// §6): the broker topology of the archive (Topology), the embedded schema
// migrations (Migrate), the mapping of a delivery to a row (RowFromDelivery),
// the batching, idempotent writer (Writer) and the consumer that ties them
// together with manual acks after COMMIT (Archiver).
//
// Delivery guarantee: a message is acked only after the transaction holding
// its row committed, and rows are unique by (sender, message_id), so every
// crash, outage or redelivery ends with each message in the table exactly
// once. Messages the database refuses for their content go to the
// dead-letter queue with the reason in the x-stompgate-reason header.
package persist
