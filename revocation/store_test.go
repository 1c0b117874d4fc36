package revocation

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stompgate/stompgate/internal/testenv"
)

// The revocation tests run against the real local Postgres (127.0.0.1:5432,
// user postgres, trust), each in a database and with a login role of its
// own, both dropped at the end.
const pgAddr = "127.0.0.1:5432"

type revEnv struct {
	admin  *pgxpool.Pool // as postgres: writes rows, like edgectl
	store  *pgxpool.Pool // as the test's own role: what the edge would use
	role   string
	dbName string
}

func randomName(prefix string) string {
	b := make([]byte, 6)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func adminExec(t testing.TB, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, "postgres://postgres@"+pgAddr+"/postgres?sslmode=disable")
	if err != nil {
		t.Fatalf("connect to Postgres (is it up? bash scripts/services.sh): %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func newRevEnv(t *testing.T) *revEnv {
	t.Helper()
	testenv.Integration(t)
	e := &revEnv{dbName: randomName("sg_rev_"), role: randomName("sg_rev_r_")}
	adminExec(t, "CREATE DATABASE "+e.dbName)
	adminExec(t, "CREATE ROLE "+e.role+" LOGIN")
	t.Cleanup(func() {
		adminExec(t, "DROP DATABASE IF EXISTS "+e.dbName+" WITH (FORCE)")
		adminExec(t, "DROP ROLE IF EXISTS "+e.role)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	e.admin, err = pgxpool.New(ctx, "postgres://postgres@"+pgAddr+"/"+e.dbName+"?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.admin.Close)
	if err := Migrate(ctx, e.admin); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.Exec(ctx, "GRANT SELECT ON stompgate_revocations TO "+e.role); err != nil {
		t.Fatal(err)
	}
	e.store, err = pgxpool.New(ctx, "postgres://"+e.role+"@"+pgAddr+"/"+e.dbName+"?sslmode=disable&application_name=stompgate-revocation-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.store.Close)
	return e
}

// run starts s and stops it when t ends, waiting for Run to return.
func runStore(t *testing.T, s *Store) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-s.Ready():
	case <-time.After(10 * time.Second):
		t.Fatalf("store not ready: %+v", s.Status())
	}
}

// changes is a Revoker that records what it was told, as relay.Server
// would be.
type changes struct {
	mu    sync.Mutex
	subs  []string
	jtis  []string
	calls [][2][]string // every Revoke call: subjects, token ids
}

func (c *changes) Revoke(subjects, tokenIDs []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subs = append(c.subs, subjects...)
	c.jtis = append(c.jtis, tokenIDs...)
	c.calls = append(c.calls, [2][]string{slices.Clone(subjects), slices.Clone(tokenIDs)})
}

// reset forgets what was recorded.
func (c *changes) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subs, c.jtis, c.calls = nil, nil, nil
}

// called returns the recorded calls.
func (c *changes) called() [][2][]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls)
}

func (c *changes) has(sub, jti string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return (sub == "" || slices.Contains(c.subs, sub)) && (jti == "" || slices.Contains(c.jtis, jti))
}

func revoked(s *Store, sub, jti string, want bool) func() error {
	return func() error {
		if got, _ := s.IsRevoked(sub, jti); got != want {
			return fmt.Errorf("IsRevoked(%q, %q) = %v", sub, jti, got)
		}
		return nil
	}
}

func TestStore(t *testing.T) {
	t.Parallel()
	e := newRevEnv(t)
	ctx := context.Background()
	for _, r := range []Row{
		{Subject: "pre", Reason: "left the company"},
		{TokenID: "pre-jti", Until: time.Now().Add(time.Hour), Reason: "leaked"},
		{Subject: "twice", Until: time.Now().Add(time.Hour), Reason: "short"},
		{Subject: "twice", Reason: "long"},
	} {
		if _, err := Revoke(ctx, e.admin, r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.admin.Exec(ctx, `INSERT INTO stompgate_revocations (subject, until) VALUES ('old', now() - interval '1 minute')`); err != nil {
		t.Fatal(err)
	}
	var clock atomic.Int64 // offset added to the real time
	s := NewStore(e.store, Config{
		Now: func() time.Time { return time.Now().Add(time.Duration(clock.Load())) },
	})
	var got changes
	unregister := s.OnRevoke(&got)
	defer unregister()
	runStore(t, s)
	// The first load reports everything in force (no session can be open
	// yet, but a reconnect reports what it missed the same way).
	if !got.has("pre", "pre-jti") || got.has("old", "") {
		t.Fatal("first load did not report what was in force")
	}
	got.reset()

	for _, c := range []struct {
		sub, jti, reason string
		want             bool
	}{
		{"pre", "", "left the company", true},
		{"", "pre-jti", "leaked", true},
		{"someone", "pre-jti", "leaked", true},
		{"twice", "", "long", true},
		{"old", "", "", false},
		{"alice", "", "", false},
		{"", "", "", false},
	} {
		if ok, reason := s.IsRevoked(c.sub, c.jti); ok != c.want || reason != c.reason {
			t.Errorf("IsRevoked(%q, %q) = %v %q", c.sub, c.jti, ok, reason)
		}
	}
	st := s.Status()
	if !st.Healthy || !s.Healthy() || st.LastErr != nil || st.LastSync.IsZero() || st.Subjects != 2 || st.Tokens != 1 {
		t.Fatalf("status %+v", st)
	}

	// A revocation reaches the store, and its callbacks, within 2 s.
	start := time.Now()
	if _, err := Revoke(ctx, e.admin, Row{Subject: "alice", Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 2*time.Second, func() error {
		if !got.has("alice", "") {
			return errors.New("no callback for alice")
		}
		return revoked(s, "alice", "", true)()
	})
	t.Logf("revocation applied after %s", time.Since(start))
	if _, err := Revoke(ctx, e.admin, Row{TokenID: "jti-1"}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 2*time.Second, func() error {
		if !got.has("", "jti-1") {
			return errors.New("no callback for jti-1")
		}
		return nil
	})
	if got.has("pre", "") || got.has("", "pre-jti") {
		t.Fatal("a reload reported a revocation that was already in force")
	}

	// Unrevoke.
	if n, err := Unrevoke(ctx, e.admin, "alice", ""); err != nil || n != 1 {
		t.Fatalf("unrevoke: %d, %v", n, err)
	}
	testenv.WaitFor(t, 2*time.Second, revoked(s, "alice", "", false))
	if n, err := Unrevoke(ctx, e.admin, "nobody", ""); err != nil || n != 0 {
		t.Fatalf("unrevoke nobody: %d, %v", n, err)
	}

	// A revocation with an end stops counting at its end without a reload.
	if _, err := Revoke(ctx, e.admin, Row{Subject: "bob", Until: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 2*time.Second, revoked(s, "bob", "", true))
	clock.Store(int64(2 * time.Hour))
	if ok, _ := s.IsRevoked("bob", ""); ok {
		t.Fatal("bob still revoked after until")
	}
	if ok, _ := s.IsRevoked("pre", ""); !ok {
		t.Fatal("pre not revoked any more")
	}
	clock.Store(0)

	// A burst of changes is applied.
	for i := range 50 {
		if _, err := Revoke(ctx, e.admin, Row{Subject: fmt.Sprintf("burst-%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, 2*time.Second, revoked(s, "burst-49", "", true))

	rs, err := List(ctx, e.admin)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 5+1+1+50 || rs[0].Subject != "pre" || rs[1].TokenID != "pre-jti" || rs[1].Until.IsZero() || rs[0].CreatedAt.IsZero() {
		t.Fatalf("list: %d rows, first %+v %+v", len(rs), rs[0], rs[1])
	}

	if _, err := Revoke(ctx, e.admin, Row{}); err == nil {
		t.Fatal("revoke of nothing accepted")
	}
	if _, err := Revoke(ctx, e.admin, Row{Subject: "a", TokenID: "b"}); err == nil {
		t.Fatal("revoke of both accepted")
	}
	if _, err := Unrevoke(ctx, e.admin, "", ""); err == nil {
		t.Fatal("unrevoke of nothing accepted")
	}
}

// With the database unreachable the store keeps its last list, says so, and
// catches up by itself once the database is back, including changes made
// while it was away.
func TestStoreDatabaseDown(t *testing.T) {
	t.Parallel()
	e := newRevEnv(t)
	ctx := context.Background()
	s := NewStore(e.store, Config{MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	var got changes
	s.OnRevoke(&got)
	runStore(t, s)
	if _, err := Revoke(ctx, e.admin, Row{Subject: "alice", Reason: "before"}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 2*time.Second, revoked(s, "alice", "", true))

	// Down: the role may not log in any more, and its sessions are killed.
	adminExec(t, "ALTER ROLE "+e.role+" NOLOGIN")
	adminExec(t, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '"+e.role+"'")
	testenv.WaitFor(t, 5*time.Second, func() error {
		if st := s.Status(); st.Healthy || st.LastErr == nil {
			return fmt.Errorf("still healthy: %+v", st)
		}
		return nil
	})
	if ok, reason := s.IsRevoked("alice", ""); !ok || reason != "before" {
		t.Fatal("last known list lost while the database is down")
	}
	// Changes while the edge cannot hear them.
	if _, err := Revoke(ctx, e.admin, Row{Subject: "carol"}); err != nil {
		t.Fatal(err)
	}
	if _, err := Unrevoke(ctx, e.admin, "alice", ""); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.IsRevoked("carol", ""); ok {
		t.Fatal("carol known while down?")
	}
	adminExec(t, "ALTER ROLE "+e.role+" LOGIN")
	testenv.WaitFor(t, 5*time.Second, func() error {
		if !s.Healthy() {
			return fmt.Errorf("not healthy: %+v", s.Status())
		}
		return nil
	})
	testenv.WaitFor(t, 2*time.Second, revoked(s, "carol", "", true))
	testenv.WaitFor(t, 2*time.Second, revoked(s, "alice", "", false))
	if !got.has("carol", "") {
		t.Fatal("no callback for carol after the reconnect")
	}
	// And it listens again.
	if _, err := Revoke(ctx, e.admin, Row{Subject: "dave"}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 2*time.Second, revoked(s, "dave", "", true))
}

// Without a notification (the table's trigger switched off for the
// statement, as a replica or a restore would) the periodic resync picks the
// change up.
func TestStoreResync(t *testing.T) {
	t.Parallel()
	e := newRevEnv(t)
	s := NewStore(e.store, Config{Resync: 200 * time.Millisecond})
	runStore(t, s)
	ctx := context.Background()
	tx, err := e.admin.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	for _, sql := range []string{
		`SET LOCAL session_replication_role = replica`, // no triggers: no NOTIFY
		`INSERT INTO stompgate_revocations (subject) VALUES ('quiet')`,
	} {
		if _, err := tx.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 3*time.Second, revoked(s, "quiet", "", true))
}

// A row written by hand (plain SQL, no pg_notify) takes effect at once:
// the table's trigger notifies, no resync needed. The same for its removal.
func TestStoreRowsByHand(t *testing.T) {
	t.Parallel()
	e := newRevEnv(t)
	s := NewStore(e.store, Config{Resync: time.Hour})
	var seen changes
	defer s.OnRevoke(&seen)()
	runStore(t, s)
	ctx := context.Background()
	if _, err := e.admin.Exec(ctx, `INSERT INTO stompgate_revocations (subject, reason) VALUES ('by-hand', 'sql')`); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 2*time.Second, revoked(s, "by-hand", "", true))
	testenv.WaitFor(t, 2*time.Second, func() error {
		if !seen.has("by-hand", "") {
			return fmt.Errorf("no OnRevoke callback for by-hand")
		}
		return nil
	})
	if _, err := e.admin.Exec(ctx, `DELETE FROM stompgate_revocations WHERE subject = 'by-hand'`); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 2*time.Second, revoked(s, "by-hand", "", false))
}

// The one path from a row to closed sessions, against the real Postgres: a
// revocation, written with plain SQL or with Revoke, reaches the Revoker the
// edge registers (its relay server) within SPEC §3's 2 seconds, naming
// exactly that subject or jti. What ends (an until that passes, Unrevoke)
// is never pushed, and what comes into force again is pushed again.
func TestStoreOnRevoke(t *testing.T) {
	t.Parallel()
	e := newRevEnv(t)
	ctx := context.Background()
	s := NewStore(e.store, Config{Resync: time.Hour}) // notifications only
	var sink changes
	unregister := s.OnRevoke(&sink)
	defer unregister()
	runStore(t, s)
	if c := sink.called(); len(c) != 0 {
		t.Fatalf("the first load of an empty table pushed %q", c)
	}
	exec := func(sql string) {
		t.Helper()
		if _, err := e.admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	revoke := func(r Row) {
		t.Helper()
		if _, err := Revoke(ctx, e.admin, r); err != nil {
			t.Fatal(err)
		}
	}
	// pushed waits for the one Revoke call that names exactly sub or jti.
	pushed := func(what, sub, jti string) {
		t.Helper()
		start := time.Now()
		testenv.WaitFor(t, 2*time.Second, func() error {
			if len(sink.called()) == 0 {
				return fmt.Errorf("%s: nothing pushed", what)
			}
			return nil
		})
		var want [2][]string
		if sub != "" {
			want[0] = []string{sub}
		}
		if jti != "" {
			want[1] = []string{jti}
		}
		if c := sink.called(); len(c) != 1 || !slices.Equal(c[0][0], want[0]) || !slices.Equal(c[0][1], want[1]) {
			t.Fatalf("%s: pushed %q, want one call with %q", what, c, want)
		}
		if ok, _ := s.IsRevoked(sub, jti); !ok {
			t.Fatalf("%s: pushed before IsRevoked knows it", what)
		}
		t.Logf("%s: pushed after %s", what, time.Since(start))
		sink.reset()
	}

	exec(`INSERT INTO stompgate_revocations (subject, reason) VALUES ('sql-sub', 'by hand')`)
	pushed("subject by SQL", "sql-sub", "")
	exec(`INSERT INTO stompgate_revocations (jti) VALUES ('sql-jti')`)
	pushed("jti by SQL", "", "sql-jti")
	revoke(Row{Subject: "api-sub", Reason: "edgectl"})
	pushed("subject by Revoke", "api-sub", "")
	revoke(Row{TokenID: "api-jti"})
	pushed("jti by Revoke", "", "api-jti")

	// An until ends the revocation by itself, without a reload or a push;
	// revoked again, the subject is pushed again.
	revoke(Row{Subject: "brief", Until: time.Now().Add(500 * time.Millisecond)})
	pushed("until in the future", "brief", "")
	testenv.WaitFor(t, 2*time.Second, revoked(s, "brief", "", false))
	revoke(Row{Subject: "brief"})
	pushed("revoked again after its until", "brief", "")

	// Unrevoke pushes nothing, nor does a row whose until has passed; an
	// UPDATE that brings that row back into force pushes it. Reloads run
	// one after the other, so a push of the first two would come first.
	if n, err := Unrevoke(ctx, e.admin, "brief", ""); err != nil || n != 2 {
		t.Fatalf("unrevoke: %d, %v", n, err)
	}
	testenv.WaitFor(t, 2*time.Second, revoked(s, "brief", "", false))
	exec(`INSERT INTO stompgate_revocations (subject, until) VALUES ('lapsed', now() - interval '1 minute')`)
	exec(`UPDATE stompgate_revocations SET until = NULL WHERE subject = 'lapsed'`)
	pushed("until lifted by UPDATE", "lapsed", "")

	// Every registered Revoker is told; an unregistered one no more.
	var second changes
	defer s.OnRevoke(&second)()
	unregister()
	revoke(Row{Subject: "late"})
	testenv.WaitFor(t, 2*time.Second, func() error {
		if !second.has("late", "") {
			return errors.New("second revoker not told")
		}
		return nil
	})
	if c := sink.called(); len(c) != 0 {
		t.Fatalf("unregistered revoker told %q", c)
	}
}

func BenchmarkIsRevoked(b *testing.B) {
	s := NewStore(nil, Config{})
	snap := &snapshot{subjects: map[string]revEntry{}, tokens: map[string]revEntry{}}
	for i := range 10000 {
		snap.subjects[fmt.Sprint("user-", i)] = revEntry{}
	}
	s.snap.Store(snap)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s.IsRevoked("alice", "01JTOKEN")
		}
	})
}
