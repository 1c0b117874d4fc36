-- +goose Up
-- Every change to stompgate_revocations notifies the edges at once, also
-- when it is made by hand or by another tool than edgectl (which notifies
-- on its own as well; the edges coalesce a burst into one reload). One
-- notification per statement: a bulk insert wakes each edge once.
-- +goose StatementBegin
CREATE FUNCTION stompgate_revocations_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('stompgate_revocations', 'changed:' || lower(TG_OP));
    RETURN NULL;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER stompgate_revocations_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON stompgate_revocations
    FOR EACH STATEMENT EXECUTE FUNCTION stompgate_revocations_notify();

-- +goose Down
DROP TRIGGER stompgate_revocations_notify ON stompgate_revocations;
DROP FUNCTION stompgate_revocations_notify();
