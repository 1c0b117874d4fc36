// Package pgdb holds what every binary that talks to Postgres needs before
// it can migrate: creating its database on a fresh machine.
package pgdb

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Ensure creates the database named in dbURL when it does not exist,
// connecting to the "postgres" database of the same server, so that a
// fresh machine needs no manual step. It reports whether it created it.
// The persister, the edge and edgectl call it before migrating; several
// may call it at once.
func Ensure(ctx context.Context, dbURL string) (bool, error) {
	cc, err := pgx.ParseConfig(dbURL)
	if err != nil {
		return false, fmt.Errorf("database URL: %w", err)
	}
	name := cc.Database
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err == nil {
		return false, conn.Close(ctx)
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "3D000" { // invalid_catalog_name
		return false, fmt.Errorf("connect to postgres: %w", err)
	}
	cc.Database = "postgres"
	admin, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return false, fmt.Errorf("connect to postgres to create database %s: %w", name, err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	_, err = admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	// Created concurrently (the edge and the persister start together):
	// Postgres reports the loser as duplicate_database, or as a unique
	// violation on pg_database when both got past the existence check.
	if errors.As(err, &pe) && (pe.Code == "42P04" || pe.Code == "23505") {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("create database %s: %w", name, err)
	}
	return true, nil
}
