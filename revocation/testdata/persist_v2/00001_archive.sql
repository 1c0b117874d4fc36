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

-- Revoked subjects and tokens, read by every edge (SPEC §3).
CREATE TABLE stompgate_revocations (
    id         bigserial   PRIMARY KEY,
    subject    text,
    jti        text,
    until      timestamptz,
    reason     text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stompgate_revocations_subject_or_jti CHECK (subject IS NOT NULL OR jti IS NOT NULL)
);
CREATE INDEX stompgate_revocations_subject ON stompgate_revocations (subject) WHERE subject IS NOT NULL;
CREATE INDEX stompgate_revocations_jti ON stompgate_revocations (jti) WHERE jti IS NOT NULL;

-- +goose Down
DROP TABLE stompgate_revocations;
DROP TABLE stompgate_streams;
DROP TABLE stompgate_messages;
