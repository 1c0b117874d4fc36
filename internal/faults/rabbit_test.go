package faults

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stompgate/stompgate/internal/testenv"
)

// privateRabbit is a RabbitMQ node of one test: its own node name, ports,
// data and log directories, with the STOMP plugin. The test may stop and
// start its application; the shared node on 5672/61613 is never touched.
type privateRabbit struct {
	node      string // sgtest-<rand>@localhost
	dir       string
	AMQPURL   string // amqp://guest:guest@127.0.0.1:<port>/%2F
	StompAddr string // 127.0.0.1:<port>
}

// startPrivateRabbit starts a private node (rabbitmq-server -detached, as
// root: the Debian wrapper runs it as the rabbitmq user) and stops and
// removes it when t ends.
func startPrivateRabbit(t *testing.T) *privateRabbit {
	t.Helper()
	testenv.Integration(t)
	if _, err := exec.LookPath("rabbitmq-server"); err != nil {
		t.Skip("rabbitmq-server not installed")
	}
	if os.Geteuid() != 0 {
		t.Skip("a private RabbitMQ node needs root (rabbitmq-server switches to the rabbitmq user)")
	}
	dir, err := os.MkdirTemp("", "sg-rabbit-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return startClusterNode(t, dir, "sgtest-"+testenv.Random(8)+"@localhost")
}

func (r *privateRabbit) pidFile() string { return filepath.Join(r.dir, "pid") }

// ctl runs rabbitmqctl against the private node.
func (r *privateRabbit) ctl(timeout time.Duration, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", append([]string{"-n", r.node}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("rabbitmqctl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// stopApp stops the RabbitMQ application (connections are closed, the
// Erlang node stays up), as rabbitmqctl stop_app does on a real node.
func (r *privateRabbit) stopApp(t *testing.T) {
	t.Helper()
	if err := r.ctl(60*time.Second, "stop_app"); err != nil {
		t.Fatal(err)
	}
}

// startApp starts it again and waits until it runs.
func (r *privateRabbit) startApp(t *testing.T) {
	t.Helper()
	if err := r.ctl(60*time.Second, "start_app"); err != nil {
		t.Fatal(err)
	}
}
