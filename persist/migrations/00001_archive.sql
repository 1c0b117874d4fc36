-- +goose Up
-- Archive and journal of everything that flows through RabbitMQ (SPEC §6).
CREATE TABLE stompgate_messages (
    id           bigserial PRIMARY KEY,
    message_id   text        NOT NULL,
    sender       text        NOT NULL,
    exchange     text        NOT NULL,
    routing_key  text        NOT NULL,
    stream       text,
    seq          bigint,
    content_type text,
    headers      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    body         bytea       NOT NULL,
    published_at timestamptz NOT NULL,
    persisted_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stompgate_messages_sender_message_id_key UNIQUE (sender, message_id),
    CONSTRAINT stompgate_messages_seq_needs_stream CHECK ((stream IS NULL) = (seq IS NULL))
);
-- Journal rows are unique per (stream, seq). Partial, so archive rows
-- (stream NULL) cost no entry in it.
CREATE UNIQUE INDEX stompgate_messages_stream_seq_key ON stompgate_messages (stream, seq) WHERE stream IS NOT NULL;
-- History by destination without seq (after_id/before_id cursors).
CREATE INDEX stompgate_messages_routing_key_id ON stompgate_messages (exchange, routing_key, id);

-- Journal: last gapless sequence number handed out per stream.
CREATE TABLE stompgate_streams (
    stream   text   PRIMARY KEY,
    last_seq bigint NOT NULL DEFAULT 0
);

-- stompgate_revocations, created here until the revocation package took it
-- over, is created by revocation/migrations now (it keeps a table created
-- here as it is).

-- +goose Down
DROP TABLE stompgate_streams;
DROP TABLE stompgate_messages;
