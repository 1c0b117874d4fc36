package main

// edgectl topology check: the live broker (management HTTP API) against
// rabbitmq/definitions.json. RabbitMQ's definitions import never changes
// what already exists (an exchange's type, a queue's arguments), so a
// broker that imported an older file silently keeps the old topology; this
// names every difference.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"
)

const topologyUsage = `usage: edgectl topology check [flags]

Compares the live broker (management HTTP API) with a definitions file:
the vhost, exchanges, queues and their arguments, bindings, policies,
users and their permissions. Prints one line per difference and exits
non-zero when there is any.

flags:
  --definitions FILE  definitions to compare with (default rabbitmq/definitions.json)
  --url URL           management API (default $RABBITMQ_MGMT_URL or http://127.0.0.1:15672)
  --user U            management user (default $RABBITMQ_MGMT_USER or guest)
  --password P        management password (default $RABBITMQ_MGMT_PASSWORD or guest)
  --vhost FROM=TO     compare the file's vhost FROM with the live vhost TO (repeatable);
                      --vhost TO alone maps every vhost of the file to TO
  --ignore-users LIST comma list of users whose permissions on the vhost are not
                      reported as extra (default guest: loopback-only, granted by
                      scripts/services.sh for development; "" reports them too)
`

// ErrTopologyDiffers is returned by topology check when the broker differs
// from the definitions.
var ErrTopologyDiffers = errors.New("topology differs from the definitions")

// definitions is the subset of RabbitMQ's definitions format the check
// compares (the same shape as GET /api/definitions/<vhost>).
type definitions struct {
	Users       []defUser       `json:"users"`
	Vhosts      []defVhost      `json:"vhosts"`
	Permissions []defPermission `json:"permissions"`
	TopicPerms  []defTopicPerm  `json:"topic_permissions"`
	Exchanges   []defExchange   `json:"exchanges"`
	Queues      []defQueue      `json:"queues"`
	Bindings    []defBinding    `json:"bindings"`
	Policies    []defPolicy     `json:"policies"`
}

type defUser struct {
	Name string `json:"name"`
	Tags any    `json:"tags"` // a list (3.9+) or a comma string (older)
}

type defVhost struct {
	Name string `json:"name"`
}

type defPermission struct {
	User      string `json:"user"`
	Vhost     string `json:"vhost"`
	Configure string `json:"configure"`
	Write     string `json:"write"`
	Read      string `json:"read"`
}

type defTopicPerm struct {
	User     string `json:"user"`
	Vhost    string `json:"vhost"`
	Exchange string `json:"exchange"`
	Write    string `json:"write"`
	Read     string `json:"read"`
}

type defExchange struct {
	Name       string         `json:"name"`
	Vhost      string         `json:"vhost"`
	Type       string         `json:"type"`
	Durable    bool           `json:"durable"`
	AutoDelete bool           `json:"auto_delete"`
	Internal   bool           `json:"internal"`
	Arguments  map[string]any `json:"arguments"`
}

type defQueue struct {
	Name       string         `json:"name"`
	Vhost      string         `json:"vhost"`
	Durable    bool           `json:"durable"`
	AutoDelete bool           `json:"auto_delete"`
	Arguments  map[string]any `json:"arguments"`
}

type defBinding struct {
	Source          string         `json:"source"`
	Vhost           string         `json:"vhost"`
	Destination     string         `json:"destination"`
	DestinationType string         `json:"destination_type"`
	RoutingKey      string         `json:"routing_key"`
	Arguments       map[string]any `json:"arguments"`
}

func (b defBinding) String() string {
	return fmt.Sprintf("binding %s → %s %s (key %q)", orDefaultExchange(b.Source), b.DestinationType, b.Destination, b.RoutingKey)
}

func orDefaultExchange(name string) string {
	if name == "" {
		return `""`
	}
	return name
}

type defPolicy struct {
	Name       string         `json:"name"`
	Vhost      string         `json:"vhost"`
	Pattern    string         `json:"pattern"`
	ApplyTo    string         `json:"apply-to"`
	Priority   int            `json:"priority"`
	Definition map[string]any `json:"definition"`
}

// liveVhost is what the management API says about one vhost.
type liveVhost struct {
	exists      bool
	defs        definitions // exchanges, queues, bindings, policies
	permissions []defPermission
	topicPerms  []defTopicPerm
}

func topology(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "check" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprint(stdout, topologyUsage)
			return nil
		}
		return fmt.Errorf("topology: expected the subcommand check\n%s", topologyUsage)
	}
	fs := flag.NewFlagSet("topology check", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	defsFile := fs.String("definitions", "rabbitmq/definitions.json", "definitions file")
	mgmtURL := fs.String("url", orEnv(getenv, "RABBITMQ_MGMT_URL", "http://127.0.0.1:15672"), "management API URL")
	user := fs.String("user", orEnv(getenv, "RABBITMQ_MGMT_USER", "guest"), "management user")
	password := fs.String("password", orEnv(getenv, "RABBITMQ_MGMT_PASSWORD", "guest"), "management password")
	ignore := fs.String("ignore-users", "guest", "users whose permissions are not reported as extra")
	var maps []string
	fs.Func("vhost", "FROM=TO or TO", func(s string) error { maps = append(maps, s); return nil })
	if err := fs.Parse(args[1:]); err != nil {
		return fmt.Errorf("topology check: %w\n%s", err, topologyUsage)
	}
	raw, err := os.ReadFile(*defsFile)
	if err != nil {
		return fmt.Errorf("topology check: %w", err)
	}
	var want definitions
	if err := json.Unmarshal(raw, &want); err != nil {
		return fmt.Errorf("topology check: %s: %w", *defsFile, err)
	}
	vmap, err := vhostMap(maps, want)
	if err != nil {
		return fmt.Errorf("topology check: %w", err)
	}
	api := &mgmtAPI{base: strings.TrimRight(*mgmtURL, "/"), user: *user, password: *password,
		client: &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	users, err := api.users(ctx)
	if err != nil {
		return fmt.Errorf("topology check: %w", err)
	}
	live := map[string]*liveVhost{}
	for _, v := range want.Vhosts {
		lv, err := api.vhost(ctx, vmap[v.Name])
		if err != nil {
			return fmt.Errorf("topology check: %w", err)
		}
		live[v.Name] = lv
	}
	var ignored []string
	for _, u := range strings.Split(*ignore, ",") {
		if u = strings.TrimSpace(u); u != "" {
			ignored = append(ignored, u)
		}
	}
	diffs := diffTopology(want, users, live, vmap, ignored)
	for _, d := range diffs {
		fmt.Fprintln(stdout, d)
	}
	var names []string
	for _, v := range want.Vhosts {
		names = append(names, describeVhost(v.Name, vmap))
	}
	if len(diffs) > 0 {
		fmt.Fprintf(stdout, "%d difference(s) between %s and the broker at %s (vhost %s)\n", len(diffs), *defsFile, api.base, strings.Join(names, ", "))
		return fmt.Errorf("%w: %d difference(s)", ErrTopologyDiffers, len(diffs))
	}
	fmt.Fprintf(stdout, "the broker at %s matches %s (vhost %s)\n", api.base, *defsFile, strings.Join(names, ", "))
	return nil
}

func orEnv(getenv func(string) string, name, def string) string {
	if v := getenv(name); v != "" {
		return v
	}
	return def
}

func describeVhost(name string, vmap map[string]string) string {
	if vmap[name] != name {
		return name + " as " + vmap[name]
	}
	return name
}

// vhostMap reads --vhost FROM=TO (or TO for every vhost of the file).
func vhostMap(specs []string, want definitions) (map[string]string, error) {
	m := map[string]string{}
	for _, v := range want.Vhosts {
		m[v.Name] = v.Name
	}
	for _, s := range specs {
		from, to, ok := strings.Cut(s, "=")
		if !ok {
			if s == "" {
				return nil, errors.New("--vhost: empty")
			}
			for k := range m {
				m[k] = s
			}
			continue
		}
		if _, known := m[from]; !known {
			return nil, fmt.Errorf("--vhost %s: the definitions have no vhost %q", s, from)
		}
		if to == "" {
			return nil, fmt.Errorf("--vhost %s: empty target", s)
		}
		m[from] = to
	}
	return m, nil
}

// diffTopology names each difference between want and the live broker.
// Extra exchanges and queues are not differences (the edge declares its
// own per-destination queues); extra policies are, and so are extra
// permissions (least privilege) and extra bindings that touch an exchange
// or queue of the file (they change its routing).
func diffTopology(want definitions, users map[string]defUser, live map[string]*liveVhost, vmap map[string]string, ignoreUsers []string) []string {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }

	for _, u := range want.Users {
		have, ok := users[u.Name]
		switch {
		case !ok:
			add("user %s: missing", u.Name)
		case !slices.Equal(tagList(u.Tags), tagList(have.Tags)):
			add("user %s: tags: want %q, have %q", u.Name, tagList(u.Tags), tagList(have.Tags))
		}
	}
	for _, v := range want.Vhosts {
		lv := live[v.Name]
		name := describeVhost(v.Name, vmap)
		if lv == nil || !lv.exists {
			add("vhost %s: missing", name)
			continue
		}
		in := func(x string) bool { return x == v.Name }

		// Permissions.
		havePerm := map[string]defPermission{}
		for _, p := range lv.permissions {
			havePerm[p.User] = p
		}
		wantUsers := map[string]bool{}
		for _, p := range want.Permissions {
			if !in(p.Vhost) {
				continue
			}
			wantUsers[p.User] = true
			h, ok := havePerm[p.User]
			if !ok {
				add("permission %s on vhost %s: missing", p.User, name)
				continue
			}
			for _, f := range [][3]string{{"configure", p.Configure, h.Configure}, {"write", p.Write, h.Write}, {"read", p.Read, h.Read}} {
				if f[1] != f[2] {
					add("permission %s on vhost %s: %s: want %q, have %q", p.User, name, f[0], f[1], f[2])
				}
			}
		}
		for _, p := range lv.permissions {
			if !wantUsers[p.User] && !slices.Contains(ignoreUsers, p.User) {
				add("permission %s on vhost %s: extra (configure %q, write %q, read %q)", p.User, name, p.Configure, p.Write, p.Read)
			}
		}
		haveTP := map[[2]string]defTopicPerm{}
		for _, p := range lv.topicPerms {
			haveTP[[2]string{p.User, p.Exchange}] = p
		}
		for _, p := range want.TopicPerms {
			if !in(p.Vhost) {
				continue
			}
			h, ok := haveTP[[2]string{p.User, p.Exchange}]
			switch {
			case !ok:
				add("topic permission %s on %s in vhost %s: missing", p.User, p.Exchange, name)
			case h.Write != p.Write || h.Read != p.Read:
				add("topic permission %s on %s in vhost %s: want write %q read %q, have write %q read %q", p.User, p.Exchange, name, p.Write, p.Read, h.Write, h.Read)
			}
		}

		// Exchanges.
		haveEx := map[string]defExchange{}
		for _, e := range lv.defs.Exchanges {
			haveEx[e.Name] = e
		}
		ours := map[string]bool{} // exchanges and queues the file defines
		for _, e := range want.Exchanges {
			if !in(e.Vhost) {
				continue
			}
			ours["exchange "+e.Name] = true
			h, ok := haveEx[e.Name]
			if !ok {
				add("exchange %s: missing", e.Name)
				continue
			}
			if h.Type != e.Type {
				add("exchange %s: type: want %s, have %s (an exchange's type cannot change: delete and re-import it)", e.Name, e.Type, h.Type)
			}
			for _, f := range []struct {
				name       string
				want, have bool
			}{{"durable", e.Durable, h.Durable}, {"auto_delete", e.AutoDelete, h.AutoDelete}, {"internal", e.Internal, h.Internal}} {
				if f.want != f.have {
					add("exchange %s: %s: want %v, have %v", e.Name, f.name, f.want, f.have)
				}
			}
			out = append(out, diffArgs("exchange "+e.Name+": argument", e.Arguments, h.Arguments)...)
		}

		// Queues.
		haveQ := map[string]defQueue{}
		for _, q := range lv.defs.Queues {
			haveQ[q.Name] = q
		}
		for _, q := range want.Queues {
			if !in(q.Vhost) {
				continue
			}
			ours["queue "+q.Name] = true
			h, ok := haveQ[q.Name]
			if !ok {
				add("queue %s: missing", q.Name)
				continue
			}
			if h.Durable != q.Durable {
				add("queue %s: durable: want %v, have %v", q.Name, q.Durable, h.Durable)
			}
			if h.AutoDelete != q.AutoDelete {
				add("queue %s: auto_delete: want %v, have %v", q.Name, q.AutoDelete, h.AutoDelete)
			}
			out = append(out, diffArgs("queue "+q.Name+": argument", q.Arguments, h.Arguments)...)
		}

		// Bindings: a multiset keyed by everything that identifies one.
		key := func(b defBinding) string {
			args, _ := json.Marshal(normArgs(b.Arguments))
			return strings.Join([]string{b.Source, b.DestinationType, b.Destination, b.RoutingKey, string(args)}, "\x00")
		}
		haveB := map[string]int{}
		for _, b := range lv.defs.Bindings {
			haveB[key(b)]++
		}
		wantB := map[string]int{}
		for _, b := range want.Bindings {
			if !in(b.Vhost) {
				continue
			}
			wantB[key(b)]++
			if haveB[key(b)] > 0 {
				haveB[key(b)]--
				continue
			}
			add("%s: missing", b)
		}
		for _, b := range lv.defs.Bindings {
			k := key(b)
			if wantB[k] > 0 {
				wantB[k]--
				continue
			}
			if ours["exchange "+b.Source] || ours[b.DestinationType+" "+b.Destination] {
				add("%s: extra", b)
			}
		}

		// Policies.
		haveP := map[string]defPolicy{}
		for _, p := range lv.defs.Policies {
			haveP[p.Name] = p
		}
		wantP := map[string]bool{}
		for _, p := range want.Policies {
			if !in(p.Vhost) {
				continue
			}
			wantP[p.Name] = true
			h, ok := haveP[p.Name]
			if !ok {
				add("policy %s: missing", p.Name)
				continue
			}
			if h.Pattern != p.Pattern || h.ApplyTo != p.ApplyTo || h.Priority != p.Priority {
				add("policy %s: want pattern %q apply-to %s priority %d, have pattern %q apply-to %s priority %d",
					p.Name, p.Pattern, p.ApplyTo, p.Priority, h.Pattern, h.ApplyTo, h.Priority)
			}
			out = append(out, diffArgs("policy "+p.Name+": definition", p.Definition, h.Definition)...)
		}
		for _, p := range lv.defs.Policies {
			if !wantP[p.Name] {
				def, _ := json.Marshal(p.Definition)
				add("policy %s: extra (pattern %q apply-to %s definition %s)", p.Name, p.Pattern, p.ApplyTo, def)
			}
		}
	}
	return out
}

// diffArgs compares x-arguments (or a policy definition) key by key.
func diffArgs(what string, want, have map[string]any) []string {
	want, have = normArgs(want), normArgs(have)
	keys := map[string]bool{}
	for k := range want {
		keys[k] = true
	}
	for k := range have {
		keys[k] = true
	}
	sorted := make([]string, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	var out []string
	for _, k := range sorted {
		w, inWant := want[k]
		h, inHave := have[k]
		switch {
		case !inHave:
			out = append(out, fmt.Sprintf("%s %s: missing (want %s)", what, k, jsonText(w)))
		case !inWant:
			out = append(out, fmt.Sprintf("%s %s: extra (have %s)", what, k, jsonText(h)))
		case !reflect.DeepEqual(w, h):
			out = append(out, fmt.Sprintf("%s %s: want %s, have %s", what, k, jsonText(w), jsonText(h)))
		}
	}
	return out
}

// normArgs makes values compare as JSON does: numbers as float64.
func normArgs(m map[string]any) map[string]any {
	if len(m) == 0 {
		return map[string]any{}
	}
	b, _ := json.Marshal(m)
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	return out
}

func jsonText(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// tagList reads user tags, a JSON list or a comma string, sorted.
func tagList(v any) []string {
	var out []string
	switch t := v.(type) {
	case string:
		for _, s := range strings.Split(t, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	case []any:
		for _, s := range t {
			if str, ok := s.(string); ok && str != "" {
				out = append(out, str)
			}
		}
	}
	sort.Strings(out)
	return out
}

// mgmtAPI is a minimal RabbitMQ management HTTP API client.
type mgmtAPI struct {
	base, user, password string
	client               *http.Client
}

var errNotFound = errors.New("not found")

func (a *mgmtAPI) get(ctx context.Context, path string, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", a.base+path, nil)
	if err != nil {
		return err
	}
	req.SetBasicAuth(a.user, a.password)
	resp, err := a.client.Do(req)
	if err != nil {
		return fmt.Errorf("management API: %w", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return errNotFound
	case resp.StatusCode == http.StatusUnauthorized:
		return fmt.Errorf("management API GET %s: 401 (check --user/--password or RABBITMQ_MGMT_USER/RABBITMQ_MGMT_PASSWORD)", path)
	case resp.StatusCode >= 300:
		return fmt.Errorf("management API GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(b)))
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("management API GET %s: %w", path, err)
	}
	return nil
}

func (a *mgmtAPI) users(ctx context.Context) (map[string]defUser, error) {
	var list []defUser
	if err := a.get(ctx, "/api/users", &list); err != nil {
		return nil, err
	}
	m := map[string]defUser{}
	for _, u := range list {
		m[u.Name] = u
	}
	return m, nil
}

func (a *mgmtAPI) vhost(ctx context.Context, name string) (*liveVhost, error) {
	v := url.PathEscape(name)
	var info map[string]any
	switch err := a.get(ctx, "/api/vhosts/"+v, &info); {
	case errors.Is(err, errNotFound):
		return &liveVhost{}, nil
	case err != nil:
		return nil, err
	}
	lv := &liveVhost{exists: true}
	if err := a.get(ctx, "/api/definitions/"+v, &lv.defs); err != nil {
		return nil, err
	}
	if err := a.get(ctx, "/api/vhosts/"+v+"/permissions", &lv.permissions); err != nil {
		return nil, err
	}
	if err := a.get(ctx, "/api/vhosts/"+v+"/topic-permissions", &lv.topicPerms); err != nil && !errors.Is(err, errNotFound) {
		return nil, err
	}
	return lv, nil
}
