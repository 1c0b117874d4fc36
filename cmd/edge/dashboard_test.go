package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/persist"
	"github.com/stompgate/stompgate/relay"
)

// TestPromQLMetricNames pins the extractor the dashboard test relies on.
func TestPromQLMetricNames(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (reason) (rate(stompgate_sessions_closed_total{instance=~"$instance"}[$__rate_interval]))`: {"stompgate_sessions_closed_total"},
		`histogram_quantile(0.99, sum by (le) (rate(a_bucket[5m])))`:                                       {"a_bucket"},
		`max(x) / on (instance) group_left (job) y offset 5m > bool 0`:                                     {"x", "y"},
		`label_values(stompgate_sessions_active, instance)`:                                                {"stompgate_sessions_active"},
		`sum(rate(m{code!="a b(c)"}[1m])) without (code)`:                                                  {"m"},
	} {
		if got := promqlMetrics(expr); !slices.Equal(got, want) {
			t.Errorf("%s: %v, want %v", expr, got, want)
		}
	}
}

var (
	promString   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	promMatchers = regexp.MustCompile(`\{[^}]*\}|\[[^\]]*\]`)
	promGrouping = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promIdent    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	labelValues  = regexp.MustCompile(`^\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)`)
	promKeywords = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true,
		"group_right": true, "bool": true, "and": true, "or": true, "unless": true, "offset": true, "inf": true, "nan": true}
)

// promqlMetrics lists the metric names a PromQL expression (or a Grafana
// label_values query) reads: identifiers that are not functions,
// keywords, label names, strings or durations.
func promqlMetrics(expr string) []string {
	if m := labelValues.FindStringSubmatch(expr); m != nil {
		return []string{m[1]}
	}
	s := promString.ReplaceAllString(expr, `""`)
	s = promMatchers.ReplaceAllString(s, " ")
	s = promGrouping.ReplaceAllString(s, " ")
	s = regexp.MustCompile(`\b\d+(\.\d+)?([eE][+-]?\d+)?[smhdwy]*\b`).ReplaceAllString(s, " ")
	var out []string
	for _, loc := range promIdent.FindAllStringIndex(s, -1) {
		id := s[loc[0]:loc[1]]
		rest := strings.TrimLeft(s[loc[1]:], " \t\n")
		if promKeywords[strings.ToLower(id)] || strings.HasPrefix(rest, "(") || (loc[0] > 0 && s[loc[0]-1] == '$') {
			continue
		}
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

// dashboardQueries returns every PromQL query of the dashboard: panel
// targets (rows included) and query variables.
func dashboardQueries(t *testing.T, file string) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels     []dashPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	out := map[string]string{}
	var walk func([]dashPanel)
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				out[fmt.Sprintf("panel %q target %s", p.Title, tg.RefID)] = tg.Expr
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if json.Unmarshal(v.Query, &q) != nil {
			_ = json.Unmarshal(v.Query, &q.Query)
		}
		out["variable "+v.Name] = q.Query
	}
	return out
}

type dashPanel struct {
	Title   string      `json:"title"`
	Panels  []dashPanel `json:"panels"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
}

// exported collects metric names as the binaries expose them: every name
// a registered collector describes (label vectors included, which a scrape
// shows only once they have a child) and, for histograms and summaries,
// the _bucket/_sum/_count series.
type exported map[string]bool

// recorder is a Registerer that records what is registered on it and
// passes it on to a real registry (so types can be gathered).
type recorder struct {
	names exported
	reg   *prometheus.Registry
}

var descName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (r *recorder) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 64)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		if m := descName.FindStringSubmatch(d.String()); m != nil {
			r.names[m[1]] = true
		}
	}
	return r.reg.Register(c)
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

func (r *recorder) Unregister(c prometheus.Collector) bool { return r.reg.Unregister(c) }

func newRecorder() *recorder { return &recorder{names: exported{}, reg: prometheus.NewRegistry()} }

// addGathered adds the series names of what reg exposes now.
func (e exported) addGathered(t *testing.T, reg *prometheus.Registry) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		e.addFamily(mf.GetName(), strings.ToLower(mf.GetType().String()))
	}
}

func (e exported) addFamily(name, typ string) {
	e[name] = true
	if typ == "histogram" || typ == "summary" {
		e[name+"_sum"], e[name+"_count"] = true, true
		if typ == "histogram" {
			e[name+"_bucket"] = true
		}
	}
}

// addScrape adds the names of a Prometheus text exposition (# TYPE lines).
func (e exported) addScrape(t *testing.T, url string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			e.addFamily(f[2], f[3])
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
}

// persisterMetrics builds the persister's registry as cmd/persister does.
func persisterMetrics(t *testing.T) exported {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), "postgres://127.0.0.1:1/none") // never dialled
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	r := newRecorder()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	persist.NewMetrics(r, pool)
	persist.NewJournalMetrics(r)
	r.names.addGathered(t, r.reg)
	return r.names
}

// TestDashboardMetricsExist: every query of docs/grafana-dashboard.json
// names only metrics the edge (a running run(), plus the relay's metric
// vectors) or the persister (its registry, built as cmd/persister does)
// exports.
func TestDashboardMetricsExist(t *testing.T) {
	queries := dashboardQueries(t, "../../docs/grafana-dashboard.json")
	if len(queries) < 10 {
		t.Fatalf("only %d queries found in the dashboard", len(queries))
	}
	vhost, dbURL := testenv.Vhost(t), testenv.DB(t)
	env := map[string]string{
		"EDGE_JWT_HS256_SECRET": testenv.Secret, "EDGE_LISTEN": "127.0.0.1:0",
		"EDGE_BROKER_LOGIN": "guest", "EDGE_BROKER_PASSCODE": "guest", "EDGE_BROKER_VHOST": vhost,
		"EDGE_DATABASE_URL": dbURL, "EDGE_DRAIN_DELAY": "0s", "EDGE_DRAIN_PERIOD": "0s",
	}
	addr := startRun(t, env)
	edge := exported{}
	edge.addScrape(t, "http://"+addr+"/metrics")
	r := newRecorder()
	relay.NewMetrics(r)
	for n := range r.names {
		edge[n] = true
	}
	r.names.addGathered(t, r.reg)
	for n := range r.names {
		edge[n] = true
	}
	persister := persisterMetrics(t)

	for where, expr := range queries {
		names := promqlMetrics(expr)
		if len(names) == 0 {
			t.Errorf("%s: no metric in %q", where, expr)
		}
		for _, n := range names {
			if !edge[n] && !persister[n] {
				t.Errorf("%s: %s is exported by neither the edge nor the persister (%q)", where, n, expr)
			}
		}
	}
}
