package main

import (
	"encoding/json"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/stompgate/stompgate/internal/testenv"
)

func TestVhostMap(t *testing.T) {
	defs := definitions{Vhosts: []defVhost{{Name: "stompgate"}, {Name: "other"}}}
	m, err := vhostMap([]string{"stompgate=test-1"}, defs)
	if err != nil || m["stompgate"] != "test-1" || m["other"] != "other" {
		t.Fatalf("%v %v", m, err)
	}
	m, err = vhostMap([]string{"all"}, defs)
	if err != nil || m["stompgate"] != "all" || m["other"] != "all" {
		t.Fatalf("%v %v", m, err)
	}
	for _, bad := range []string{"nope=x", "stompgate=", ""} {
		if _, err := vhostMap([]string{bad}, defs); err == nil {
			t.Errorf("--vhost %q accepted", bad)
		}
	}
}

func TestDiffArgs(t *testing.T) {
	got := diffArgs("queue q: argument",
		map[string]any{"x-queue-type": "quorum", "x-delivery-limit": 5, "x-dead-letter-exchange": "dlx"},
		map[string]any{"x-queue-type": "classic", "x-delivery-limit": float64(5), "x-max-length": 10})
	want := []string{
		`queue q: argument x-dead-letter-exchange: missing (want "dlx")`,
		`queue q: argument x-max-length: extra (have 10)`,
		`queue q: argument x-queue-type: want "quorum", have "classic"`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestTopologyUsage(t *testing.T) {
	if _, err := runCmd(t, env(nil), "topology"); err == nil {
		t.Fatal("topology without check")
	}
	out, err := runCmd(t, env(nil), "topology", "--help")
	if err != nil || !strings.Contains(out, "--vhost FROM=TO") {
		t.Fatalf("%q %v", out, err)
	}
	if _, err := runCmd(t, env(nil), "topology", "check", "--definitions", filepath.Join(t.TempDir(), "none.json")); err == nil {
		t.Fatal("a missing definitions file accepted")
	}
}

// TestTopologyCheck applies rabbitmq/definitions.json to a private vhost
// of the real broker (its users renamed to users of this test), sees no
// difference, then changes one thing at a time and sees each named.
func TestTopologyCheck(t *testing.T) {
	vhost := testenv.Vhost(t)
	raw, err := os.ReadFile("../../rabbitmq/definitions.json")
	if err != nil {
		t.Fatal(err)
	}
	var defs map[string]any
	if err := json.Unmarshal(raw, &defs); err != nil {
		t.Fatal(err)
	}
	// Users are global: give this test its own, so it neither depends on
	// nor touches the product's users.
	suffix := "-" + strings.ToLower(ulid.Make().String())
	rename := map[string]string{}
	for _, u := range defs["users"].([]any) {
		u := u.(map[string]any)
		name := u["name"].(string)
		rename[name] = name + suffix
		u["name"] = rename[name]
		if err := testenv.Mgmt("PUT", "/api/users/"+url.PathEscape(rename[name]),
			map[string]any{"password_hash": u["password_hash"], "hashing_algorithm": u["hashing_algorithm"], "tags": ""}, nil); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = testenv.Mgmt("DELETE", "/api/users/"+url.PathEscape(name+suffix), nil, nil) })
	}
	for _, p := range defs["permissions"].([]any) {
		p := p.(map[string]any)
		p["user"] = rename[p["user"].(string)]
	}
	file := filepath.Join(t.TempDir(), "definitions.json")
	b, _ := json.Marshal(defs)
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	// Apply the topology to the test's vhost: the vhost-scoped definitions
	// import, then the permissions.
	scoped := map[string]any{}
	for _, k := range []string{"exchanges", "queues", "bindings", "policies"} {
		items := []any{}
		for _, it := range defs[k].([]any) {
			m := it.(map[string]any)
			delete(m, "vhost")
			items = append(items, m)
		}
		scoped[k] = items
	}
	v := url.PathEscape(vhost)
	if err := testenv.Mgmt("POST", "/api/definitions/"+v, scoped, nil); err != nil {
		t.Fatal(err)
	}
	for _, p := range defs["permissions"].([]any) {
		p := p.(map[string]any)
		if err := testenv.Mgmt("PUT", "/api/permissions/"+v+"/"+url.PathEscape(p["user"].(string)),
			map[string]any{"configure": p["configure"], "write": p["write"], "read": p["read"]}, nil); err != nil {
			t.Fatal(err)
		}
	}
	edge, persister := rename["stompgate-edge"], rename["stompgate-persister"]
	as := "stompgate as " + vhost

	check := func(want []string, extra ...string) {
		t.Helper()
		var diffs []string
		var err error
		testenv.WaitFor(t, 10*time.Second, func() error {
			var out string
			out, err = runCmd(t, env(nil), append([]string{"topology", "check", "--definitions", file, "--vhost", "stompgate=" + vhost, "--url", testenv.MgmtURL}, extra...)...)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			diffs = lines[:len(lines)-1] // the last line is the summary
			slices.Sort(diffs)
			if !slices.Equal(diffs, want) {
				return errors.New("got:\n" + out)
			}
			return nil
		})
		if len(want) == 0 && err != nil {
			t.Fatalf("no difference expected: %v", err)
		}
		if len(want) > 0 && !errors.Is(err, ErrTopologyDiffers) {
			t.Fatalf("differences %v, but the error is %v", want, err)
		}
	}
	check(nil)
	// The guest user testenv granted is ignored by default, named when asked.
	check([]string{`permission guest on vhost ` + as + `: extra (configure ".*", write ".*", read ".*")`}, "--ignore-users", "")

	// A binding deleted.
	var bs []struct {
		Source        string `json:"source"`
		PropertiesKey string `json:"properties_key"`
	}
	if err := testenv.Mgmt("GET", "/api/queues/"+v+"/stompgate.archive/bindings", nil, &bs); err != nil {
		t.Fatal(err)
	}
	for _, bnd := range bs {
		if bnd.Source == "amq.topic" {
			if err := testenv.Mgmt("DELETE", "/api/bindings/"+v+"/e/amq.topic/q/stompgate.archive/"+url.PathEscape(bnd.PropertiesKey), nil, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := []string{`binding amq.topic → queue stompgate.archive (key "#"): missing`}
	check(want)

	// A queue with the wrong arguments (and so without its binding).
	if err := testenv.Mgmt("DELETE", "/api/queues/"+v+"/stompgate.archive.dlq", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := testenv.Mgmt("PUT", "/api/queues/"+v+"/stompgate.archive.dlq", map[string]any{"durable": true, "arguments": map[string]any{"x-queue-type": "classic"}}, nil); err != nil {
		t.Fatal(err)
	}
	want = append(want,
		`binding stompgate.dlx → queue stompgate.archive.dlq (key ""): missing`,
		`queue stompgate.archive.dlq: argument x-queue-type: want "quorum", have "classic"`)
	// An extra binding onto a queue of the file, and one that is not ours.
	if err := testenv.Mgmt("POST", "/api/bindings/"+v+"/e/stompgate.user/q/stompgate.archive", map[string]any{"routing_key": "leak"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := testenv.Mgmt("PUT", "/api/queues/"+v+"/edge-own", map[string]any{"durable": false, "auto_delete": true}, nil); err != nil {
		t.Fatal(err)
	}
	if err := testenv.Mgmt("POST", "/api/bindings/"+v+"/e/amq.topic/q/edge-own", map[string]any{"routing_key": "room.1"}, nil); err != nil {
		t.Fatal(err)
	}
	want = append(want, `binding stompgate.user → queue stompgate.archive (key "leak"): extra`)
	// A policy nobody declared.
	if err := testenv.Mgmt("PUT", "/api/policies/"+v+"/cap", map[string]any{"pattern": `^stompgate\.archive$`, "apply-to": "queues", "definition": map[string]any{"max-length": 10}}, nil); err != nil {
		t.Fatal(err)
	}
	want = append(want, `policy cap: extra (pattern "^stompgate\\.archive$" apply-to queues definition {"max-length":10})`)
	// A permission widened, a user gone (and with it its permission).
	if err := testenv.Mgmt("PUT", "/api/permissions/"+v+"/"+url.PathEscape(edge), map[string]any{"configure": "^(?!stompgate\\.).*", "write": "^(?!stompgate\\.(archive|dlx)).*", "read": ".*"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := testenv.Mgmt("DELETE", "/api/users/"+url.PathEscape(persister), nil, nil); err != nil {
		t.Fatal(err)
	}
	want = append(want,
		`permission `+edge+` on vhost `+as+`: read: want "^(?!stompgate\\.(archive|ingest|dlx)).*", have ".*"`,
		`permission `+persister+` on vhost `+as+`: missing`,
		`user `+persister+`: missing`)
	slices.Sort(want)
	check(want)

	// A vhost that does not exist.
	out, err := runCmd(t, env(nil), "topology", "check", "--definitions", file, "--vhost", "stompgate="+vhost+"-none", "--url", testenv.MgmtURL)
	if !errors.Is(err, ErrTopologyDiffers) || !strings.Contains(out, "vhost stompgate as "+vhost+"-none: missing") {
		t.Fatalf("%q %v", out, err)
	}
}
