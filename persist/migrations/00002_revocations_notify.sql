-- +goose Up
-- Empty on purpose. Version 2 created the notify trigger of
-- stompgate_revocations; the revocation package owns that table now and
-- its migration (revocation/migrations/00001_revocations.sql) creates or
-- replaces the trigger. The file stays so that version 2 means the same
-- in every database: applied where it ran before, a no-op elsewhere.

-- +goose Down
