// Services beyond RabbitMQ vhosts: Postgres databases (shared or a private,
// stoppable server), AMQP connections, queue depths and free ports.

package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
)

// PGAddr is the shared local PostgreSQL server.
const PGAddr = "127.0.0.1:5432"

// Random returns n random hex characters.
func Random(n int) string {
	b := make([]byte, (n+1)/2)
	rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// Dial connects to vhost as guest and closes the connection when t ends.
func Dial(t testing.TB, vhost string) *amqp.Connection {
	t.Helper()
	Integration(t)
	conn, err := amqp.Dial(AMQPURL(vhost))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// QueueDepth returns the number of ready messages of a queue as the broker
// sees it now (a passive declare; the management API lags by seconds).
func QueueDepth(t testing.TB, vhost, queue string) (ready int) {
	t.Helper()
	conn, err := amqp.Dial(AMQPURL(vhost))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("passive declare %s: %v", queue, err)
	}
	return q.Messages
}

// ConnectionNames returns the management API names of vhost's connections
// whose connection_name client property is clientName.
func ConnectionNames(vhost, clientName string) ([]string, error) {
	var conns []struct {
		Name             string         `json:"name"`
		ClientProperties map[string]any `json:"client_properties"`
	}
	if err := Mgmt("GET", "/api/vhosts/"+url.PathEscape(vhost)+"/connections", nil, &conns); err != nil {
		return nil, err
	}
	var out []string
	for _, c := range conns {
		if c.ClientProperties["connection_name"] == clientName {
			out = append(out, c.Name)
		}
	}
	return out, nil
}

// DB creates a database on the shared Postgres for t, drops it when t ends
// and returns its URL.
func DB(t testing.TB) string {
	t.Helper()
	return DBOn(t, PGAddr)
}

// DBOn creates a database on the Postgres at addr for t (dropped when t
// ends) and returns its URL.
func DBOn(t testing.TB, addr string) string {
	t.Helper()
	Integration(t)
	name := "sg_test_" + Random(10)
	admin := "postgres://postgres@" + addr + "/postgres?sslmode=disable"
	exec := func(sql string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := exec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("create database (is Postgres up? bash scripts/services.sh): %v", err)
	}
	t.Cleanup(func() {
		if err := exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)"); err != nil {
			t.Errorf("drop database: %v", err)
		}
	})
	return "postgres://postgres@" + addr + "/" + name + "?sslmode=disable"
}

// Pool opens a pool on dbURL, closed when t ends.
func Pool(t testing.TB, dbURL string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Count runs a query returning one integer.
func Count(ctx context.Context, pool *pgxpool.Pool, sql string, args ...any) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var n int
	err := pool.QueryRow(ctx, sql, args...).Scan(&n)
	return n, err
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. It
// is picked below Linux's ephemeral range (32768-60999), so that outgoing
// connections of other tests do not take it while a server is restarted.
func FreePort(t testing.TB) int {
	t.Helper()
	for range 100 {
		port := 20000 + mrand.IntN(12000)
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			ln.Close()
			return port
		}
	}
	t.Fatal("no free port found")
	return 0
}

// PrivatePostgres is a Postgres server of one test, in a temporary data
// directory on its own port, that the test may stop and start.
type PrivatePostgres struct {
	Addr    string
	dir     string
	bin     string
	asUser  []string
	logFile string
}

// StartPrivatePostgres initialises and starts a private Postgres server
// (initdb with trust auth, listening on 127.0.0.1 only) and stops and
// removes it when t ends. As root it runs the server as the postgres user.
func StartPrivatePostgres(t testing.TB) *PrivatePostgres {
	t.Helper()
	Integration(t)
	vers, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(vers) == 0 {
		t.Fatal("no /usr/lib/postgresql/*/bin/initdb; run bash scripts/services.sh")
	}
	sort.Strings(vers)
	bin := filepath.Dir(vers[len(vers)-1])
	dir, err := os.MkdirTemp("", "sg-pg-")
	if err != nil {
		t.Fatal(err)
	}
	p := &PrivatePostgres{bin: bin, dir: dir, logFile: filepath.Join(dir, "log")}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if os.Geteuid() == 0 {
		p.asUser = []string{"runuser", "-u", "postgres", "--"}
		if out, err := exec.Command("chown", "postgres:postgres", dir).CombinedOutput(); err != nil {
			t.Fatalf("chown: %v: %s", err, out)
		}
	}
	if out, err := p.cmd("initdb", "-D", p.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8",
		"--no-sync", "--locale=C").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v: %s", err, out)
	}
	port := FreePort(t)
	p.Addr = fmt.Sprintf("127.0.0.1:%d", port)
	conf := fmt.Sprintf("listen_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\nfsync = off\nmax_connections = 50\n",
		port, dir)
	f, err := os.OpenFile(filepath.Join(p.data(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(conf)
	f.Close()
	p.Start(t)
	t.Cleanup(func() { p.cmd("pg_ctl", "-D", p.data(), "-m", "immediate", "-w", "stop").Run() })
	return p
}

func (p *PrivatePostgres) data() string { return filepath.Join(p.dir, "data") }

func (p *PrivatePostgres) cmd(name string, args ...string) *exec.Cmd {
	argv := append(append([]string{}, p.asUser...), append([]string{filepath.Join(p.bin, name)}, args...)...)
	return exec.Command(argv[0], argv[1:]...)
}

// Start starts the server and waits until it accepts connections.
func (p *PrivatePostgres) Start(t testing.TB) {
	t.Helper()
	if out, err := p.cmd("pg_ctl", "-D", p.data(), "-l", p.logFile, "-w", "-t", "60", "start").CombinedOutput(); err != nil {
		log, _ := os.ReadFile(p.logFile)
		t.Fatalf("pg_ctl start: %v: %s\n%s", err, out, log)
	}
	WaitFor(t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, "postgres://postgres@"+p.Addr+"/postgres?sslmode=disable")
		if err != nil {
			return err
		}
		return c.Close(ctx)
	})
}

// Stop stops the server (fast shutdown: sessions are terminated).
func (p *PrivatePostgres) Stop(t testing.TB) {
	t.Helper()
	if out, err := p.cmd("pg_ctl", "-D", p.data(), "-m", "fast", "-w", "stop").CombinedOutput(); err != nil {
		t.Fatalf("pg_ctl stop: %v: %s", err, out)
	}
}

// Env returns getenv over m.
func Env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}
