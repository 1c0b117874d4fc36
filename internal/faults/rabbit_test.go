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
	amqpPort, stompPort, distPort := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	r := &privateRabbit{
		node:      "sgtest-" + testenv.Random(8) + "@localhost",
		dir:       dir,
		AMQPURL:   fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/%%2F", amqpPort),
		StompAddr: fmt.Sprintf("127.0.0.1:%d", stompPort),
	}
	conf := fmt.Sprintf("listeners.tcp.default = 127.0.0.1:%d\nstomp.listeners.tcp.1 = 127.0.0.1:%d\nloopback_users = none\n", amqpPort, stompPort)
	for name, content := range map[string]string{"rabbitmq.conf": conf, "enabled_plugins": "[rabbitmq_stomp].\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("chown", "-R", "rabbitmq:rabbitmq", dir).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v: %s", err, out)
	}
	cmd := exec.Command("rabbitmq-server", "-detached")
	cmd.Env = append(os.Environ(),
		"RABBITMQ_NODENAME="+r.node,
		fmt.Sprintf("RABBITMQ_NODE_PORT=%d", amqpPort),
		fmt.Sprintf("RABBITMQ_DIST_PORT=%d", distPort),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_PID_FILE="+r.pidFile(),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq.conf"),
	)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("rabbitmq-server -detached: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if err := r.ctl(60*time.Second, "stop", r.pidFile()); err != nil {
			t.Logf("stopping the private node: %v; killing it", err)
			if pid, err := os.ReadFile(r.pidFile()); err == nil {
				_ = exec.Command("kill", "-9", strings.TrimSpace(string(pid))).Run()
			}
		}
	})
	if err := r.ctl(90*time.Second, "wait", "--timeout", "90", r.pidFile()); err != nil {
		logs, _ := exec.Command("sh", "-c", "tail -n 40 "+filepath.Join(dir, "log")+"/*.log").CombinedOutput()
		t.Fatalf("private node did not start: %v\n%s", err, logs)
	}
	return r
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
