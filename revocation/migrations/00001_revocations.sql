-- +goose Up
-- Revoked subjects and tokens, read by every edge (SPEC §3).
--
-- Until this package owned it, persist's migrations 00001 (table, indexes)
-- and 00002 (trigger) created all of this. Databases migrated by them keep
-- their objects: every statement here leaves an existing one as it is
-- (IF NOT EXISTS) or replaces it with the same definition (OR REPLACE).
CREATE TABLE IF NOT EXISTS stompgate_revocations (
    id         bigserial   PRIMARY KEY,
    subject    text,
    jti        text,
    until      timestamptz,
    reason     text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stompgate_revocations_subject_or_jti CHECK (subject IS NOT NULL OR jti IS NOT NULL)
);
CREATE INDEX IF NOT EXISTS stompgate_revocations_subject ON stompgate_revocations (subject) WHERE subject IS NOT NULL;
CREATE INDEX IF NOT EXISTS stompgate_revocations_jti ON stompgate_revocations (jti) WHERE jti IS NOT NULL;

-- Every change to stompgate_revocations notifies the edges at once, also
-- when it is made by hand or by another tool than edgectl (which notifies
-- on its own as well; the edges coalesce a burst into one reload). One
-- notification per statement: a bulk insert wakes each edge once.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION stompgate_revocations_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('stompgate_revocations', 'changed:' || lower(TG_OP));
    RETURN NULL;
END
$$;
-- +goose StatementEnd
-- OR REPLACE TRIGGER needs PostgreSQL 14 or later.
CREATE OR REPLACE TRIGGER stompgate_revocations_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON stompgate_revocations
    FOR EACH STATEMENT EXECUTE FUNCTION stompgate_revocations_notify();

-- +goose Down
DROP TABLE IF EXISTS stompgate_revocations;
DROP FUNCTION IF EXISTS stompgate_revocations_notify();
