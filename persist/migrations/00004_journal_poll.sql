-- +goose Up
-- stompgate_publish no longer notifies. Postgres serialises the commits of
-- transactions that NOTIFY (PreCommit_Notify takes a cluster-wide lock and
-- holds it through the WAL flush), so notifying transactions cannot share
-- an fsync: ~1,100 tx/s here against ~3,000 without (docs/BENCHMARKS.md).
-- Instead the journal leader polls, every few milliseconds, the streams
-- with rows it has not taken charge of: claimed_seq is the last seq the
-- leader has taken charge of broadcasting, set in the transaction of its
-- own batches (it publishes their rows, and anything older, right after
-- COMMIT) and with broadcast_seq when it records confirmed broadcasts.
-- stompgate_publish advances last_seq only, so last_seq > claimed_seq
-- means "rows committed by an application, maybe not broadcast yet". The
-- partial index keeps the poll proportional to those streams: not to
-- every stream, and not to the streams the leader has just written
-- itself (broadcast_seq is recorded lazily, up to 100 ms later).
-- claimed_seq only steers the poll; what a new leader re-broadcasts is
-- still decided by broadcast_seq (broadcast_seq <= claimed_seq <= last_seq).
ALTER TABLE stompgate_streams ADD COLUMN claimed_seq bigint NOT NULL DEFAULT 0;
UPDATE stompgate_streams SET claimed_seq = last_seq;
CREATE INDEX stompgate_streams_pending ON stompgate_streams (stream)
    WHERE last_seq > claimed_seq;

-- The same function as in 00003 without the pg_notify: same signature,
-- same checks, same row, returns the seq.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION stompgate_journal_append(p_stream text, p_body bytea, p_content_type text, p_headers jsonb, p_sender text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
    v_id  text;
BEGIN
    IF p_stream IS NULL OR p_stream = '' THEN
        RAISE EXCEPTION 'stompgate_publish: stream must not be empty' USING ERRCODE = '22023';
    END IF;
    IF octet_length(p_stream) > 255 THEN
        RAISE EXCEPTION 'stompgate_publish: stream longer than 255 bytes (an AMQP routing key)' USING ERRCODE = '22023';
    END IF;
    IF p_headers IS NOT NULL AND jsonb_typeof(p_headers) <> 'object' THEN
        RAISE EXCEPTION 'stompgate_publish: headers must be a JSON object' USING ERRCODE = '22023';
    END IF;
    INSERT INTO stompgate_streams AS s (stream, last_seq) VALUES (p_stream, 1)
        ON CONFLICT (stream) DO UPDATE SET last_seq = s.last_seq + 1
        RETURNING s.last_seq INTO v_seq;
    v_id := 'pg:' || gen_random_uuid()::text;
    INSERT INTO stompgate_messages (message_id, sender, exchange, routing_key, stream, seq,
                                    content_type, headers, body, published_at)
    VALUES (v_id, coalesce(nullif(p_sender, ''), 'pg:' || session_user), 'amq.topic', p_stream, p_stream, v_seq,
            p_content_type,
            jsonb_build_object('properties', jsonb_strip_nulls(jsonb_build_object('content_type', p_content_type, 'message_id', v_id)),
                               'headers', coalesce(p_headers, '{}'::jsonb)),
            coalesce(p_body, ''::bytea), clock_timestamp());
    RETURN v_seq;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION stompgate_journal_append(p_stream text, p_body bytea, p_content_type text, p_headers jsonb, p_sender text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
    v_id  text;
BEGIN
    IF p_stream IS NULL OR p_stream = '' THEN
        RAISE EXCEPTION 'stompgate_publish: stream must not be empty' USING ERRCODE = '22023';
    END IF;
    IF octet_length(p_stream) > 255 THEN
        RAISE EXCEPTION 'stompgate_publish: stream longer than 255 bytes (an AMQP routing key)' USING ERRCODE = '22023';
    END IF;
    IF p_headers IS NOT NULL AND jsonb_typeof(p_headers) <> 'object' THEN
        RAISE EXCEPTION 'stompgate_publish: headers must be a JSON object' USING ERRCODE = '22023';
    END IF;
    INSERT INTO stompgate_streams AS s (stream, last_seq) VALUES (p_stream, 1)
        ON CONFLICT (stream) DO UPDATE SET last_seq = s.last_seq + 1
        RETURNING s.last_seq INTO v_seq;
    v_id := 'pg:' || gen_random_uuid()::text;
    INSERT INTO stompgate_messages (message_id, sender, exchange, routing_key, stream, seq,
                                    content_type, headers, body, published_at)
    VALUES (v_id, coalesce(nullif(p_sender, ''), 'pg:' || session_user), 'amq.topic', p_stream, p_stream, v_seq,
            p_content_type,
            jsonb_build_object('properties', jsonb_strip_nulls(jsonb_build_object('content_type', p_content_type, 'message_id', v_id)),
                               'headers', coalesce(p_headers, '{}'::jsonb)),
            coalesce(p_body, ''::bytea), clock_timestamp());
    PERFORM pg_notify('stompgate_journal', p_stream);
    RETURN v_seq;
END
$$;
-- +goose StatementEnd
DROP INDEX stompgate_streams_pending;
ALTER TABLE stompgate_streams DROP COLUMN claimed_seq;
