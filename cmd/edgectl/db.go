package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stompgate/stompgate/internal/pgdb"
	"github.com/stompgate/stompgate/revocation"
)

// dbTimeout bounds every database step of a command.
const dbTimeout = 15 * time.Second

// openDB connects to the database, creating it if needed, and applies the
// revocation migrations (so the table exists even before the first edge
// started). edgectl touches no other table.
func openDB(ctx context.Context, url string) (*pgxpool.Pool, error) {
	if url == "" {
		return nil, errors.New("no database: set EDGE_DATABASE_URL or pass --database")
	}
	if _, err := pgdb.Ensure(ctx, url); err != nil {
		return nil, err
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	if err := revocation.Migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

// target is the --subject/--jti pair of revoke and unrevoke.
type target struct{ subject, jti string }

func (t *target) flags(fs *flag.FlagSet) {
	fs.StringVar(&t.subject, "subject", "", "the subject (sub claim) to act on")
	fs.StringVar(&t.jti, "jti", "", "the token id (jti claim) to act on")
}

func (t *target) check(cmd string) error {
	if (t.subject == "") == (t.jti == "") {
		return fmt.Errorf("%s: give exactly one of --subject or --jti", cmd)
	}
	return nil
}

func (t *target) String() string {
	if t.subject != "" {
		return "subject " + fmt.Sprintf("%q", t.subject)
	}
	return "token " + fmt.Sprintf("%q", t.jti)
}

// parseUntil reads --until: an RFC 3339 time, or a duration from now.
func parseUntil(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("--until %s: a duration must be positive", s)
		}
		return now.Add(d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--until %q: neither an RFC 3339 time (2026-01-02T15:04:05Z) nor a duration (24h)", s)
	}
	if !t.After(now) {
		return time.Time{}, fmt.Errorf("--until %s is in the past", s)
	}
	return t, nil
}

func revoke(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("revoke", flag.ContinueOnError)
	var t target
	t.flags(fs)
	until := fs.String("until", "", "end of the revocation: RFC 3339 time or duration from now (default: until unrevoked)")
	reason := fs.String("reason", "", "why (shown to the client in the ERROR frame and in logs)")
	dbURL := fs.String("database", getenv("EDGE_DATABASE_URL"), "Postgres URL (default $EDGE_DATABASE_URL)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := t.check("revoke"); err != nil {
		return err
	}
	u, err := parseUntil(*until, time.Now())
	if err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	pool, err := openDB(ctx, *dbURL)
	if err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	defer pool.Close()
	id, err := revocation.Revoke(ctx, pool, revocation.Row{Subject: t.subject, TokenID: t.jti, Until: u, Reason: *reason})
	if err != nil {
		return err
	}
	when := "until unrevoked"
	if !u.IsZero() {
		when = "until " + u.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(stdout, "revoked %s %s (id %d)\n", t.String(), when, id)
	return nil
}

func unrevoke(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("unrevoke", flag.ContinueOnError)
	var t target
	t.flags(fs)
	dbURL := fs.String("database", getenv("EDGE_DATABASE_URL"), "Postgres URL (default $EDGE_DATABASE_URL)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := t.check("unrevoke"); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	pool, err := openDB(ctx, *dbURL)
	if err != nil {
		return fmt.Errorf("unrevoke: %w", err)
	}
	defer pool.Close()
	n, err := revocation.Unrevoke(ctx, pool, t.subject, t.jti)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "unrevoked %s (%d rows deleted)\n", t.String(), n)
	return nil
}

func revocations(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("revocations", flag.ContinueOnError)
	dbURL := fs.String("database", getenv("EDGE_DATABASE_URL"), "Postgres URL (default $EDGE_DATABASE_URL)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	pool, err := openDB(ctx, *dbURL)
	if err != nil {
		return fmt.Errorf("revocations: %w", err)
	}
	defer pool.Close()
	rs, err := revocation.List(ctx, pool)
	if err != nil {
		return err
	}
	now := time.Now()
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSUBJECT\tJTI\tUNTIL\tSTATE\tREASON\tCREATED")
	for _, r := range rs {
		until, state := "-", "active"
		if !r.Until.IsZero() {
			until = r.Until.UTC().Format(time.RFC3339)
		}
		if !r.Active(now) {
			state = "expired"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, orDash(r.Subject), orDash(r.TokenID), until, state,
			orDash(r.Reason), r.CreatedAt.UTC().Format(time.RFC3339))
	}
	return tw.Flush()
}

// orDash prints "-" for empty fields and quotes fields a terminal would
// mangle (spaces, controls), so a subject can be copied back into --subject.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '"' }) {
		return fmt.Sprintf("%q", s)
	}
	return s
}
