-- +goose Up
-- Journal (SPEC §6): every stream has a gapless seq (last_seq, taken in the
-- writer's transaction) and a broadcast mark (broadcast_seq): rows with
-- broadcast_seq < seq <= last_seq are committed but not yet confirmed
-- broadcast to amq.topic. The persister that leads the journal broadcasts
-- them in seq order (at once after its own commits, on NOTIFY
-- stompgate_journal for stompgate_publish, and by a periodic scan), then
-- advances broadcast_seq.
ALTER TABLE stompgate_streams ADD COLUMN broadcast_seq bigint NOT NULL DEFAULT 0;

-- stompgate_journal_append takes the next seq of p_stream in the caller's
-- transaction (the stream's row stays locked until COMMIT or ROLLBACK, so
-- seqs are gapless and a rollback gives its seq back), inserts the row and
-- notifies the journal leader, which broadcasts after COMMIT (NOTIFY is
-- delivered on commit only).
-- +goose StatementBegin
CREATE FUNCTION stompgate_journal_append(p_stream text, p_body bytea, p_content_type text, p_headers jsonb, p_sender text)
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

-- stompgate_publish(stream, body, content_type, headers, sender) publishes
-- from the application's own transaction (SPEC §6) and returns the seq.
-- sender defaults to 'pg:' || session_user and becomes x-user-id.
-- +goose StatementBegin
CREATE FUNCTION stompgate_publish(stream text, body bytea, content_type text DEFAULT NULL,
                                  headers jsonb DEFAULT '{}', sender text DEFAULT NULL)
RETURNS bigint LANGUAGE sql AS $$
    SELECT stompgate_journal_append($1, $2, $3, $4, $5)
$$;
-- +goose StatementEnd
-- The text overload stores the UTF-8 bytes; content_type defaults to
-- text/plain;charset=utf-8.
-- +goose StatementBegin
CREATE FUNCTION stompgate_publish(stream text, body text, content_type text DEFAULT 'text/plain;charset=utf-8',
                                  headers jsonb DEFAULT '{}', sender text DEFAULT NULL)
RETURNS bigint LANGUAGE sql AS $$
    SELECT stompgate_journal_append($1, convert_to($2, 'UTF8'), $3, $4, $5)
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION stompgate_publish(text, text, text, jsonb, text);
DROP FUNCTION stompgate_publish(text, bytea, text, jsonb, text);
DROP FUNCTION stompgate_journal_append(text, bytea, text, jsonb, text);
ALTER TABLE stompgate_streams DROP COLUMN broadcast_seq;
