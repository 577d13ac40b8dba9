package grafana

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"
)

type target struct {
	RefID      string            `json:"refId"`
	Expr       string            `json:"expr"`
	Datasource map[string]string `json:"datasource"`
}

type panel struct {
	ID         int               `json:"id"`
	Type       string            `json:"type"`
	Title      string            `json:"title"`
	Datasource map[string]string `json:"datasource"`
	GridPos    struct{ H, W, X, Y int }
	Targets    []target `json:"targets"`
	Panels     []panel  `json:"panels"` // a collapsed row's
}

type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

// Expand replaces the Grafana variables the dashboard uses with values Grafana could give
// them, leaving plain PromQL. scripts/suites/30-prometheus.sh does the same with sed.
func Expand(expr string) string {
	return strings.NewReplacer(
		"$__rate_interval", "1m", "$__interval", "15s", "$__range", "1h",
		"${job}", ".+", "$job", ".+",
	).Replace(expr)
}

func load(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile("wsregistry.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("wsregistry.json: %v", err)
	}
	return d
}

func queryPanels(d dashboard) []panel {
	var out []panel
	for _, p := range d.Panels {
		if p.Type == "row" {
			out = append(out, p.Panels...)
			continue
		}
		out = append(out, p)
	}
	return out
}

// The dashboard imports anywhere: a datasource variable rather than a fixed data source,
// unique ids, every panel on the 24-column grid.
func TestDashboard_ImportableWithADatasourceVariable(t *testing.T) {
	d := load(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q, title %q: both needed for a stable import", d.UID, d.Title)
	}
	var ds bool
	for _, v := range d.Templating.List {
		if v.Name == "datasource" && v.Type == "datasource" && v.Query == "prometheus" {
			ds = true
		}
	}
	if !ds {
		t.Error("no templating variable `datasource` of type datasource for prometheus")
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		for _, q := range append([]panel{p}, p.Panels...) {
			if ids[q.ID] {
				t.Errorf("panel id %d twice", q.ID)
			}
			ids[q.ID] = true
			if q.GridPos.W <= 0 || q.GridPos.X+q.GridPos.W > 24 {
				t.Errorf("panel %q: grid position %+v outside the 24 columns", q.Title, q.GridPos)
			}
		}
	}
	for _, p := range queryPanels(d) {
		if p.Datasource["uid"] != "${datasource}" {
			t.Errorf("panel %q: data source %v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.Datasource["uid"] != "${datasource}" {
				t.Errorf("panel %q query %s: data source %v", p.Title, tg.RefID, tg.Datasource)
			}
			if tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("panel %q: refId %q empty or repeated", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
		}
	}
}

// Every query parses with Prometheus' own PromQL parser, selects only metrics the README
// documents, and together they cover what the dashboard promises.
func TestDashboard_EveryQueryParsesAndUsesDocumentedMetrics(t *testing.T) {
	d := load(t)
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{"up": true}
	for _, m := range regexp.MustCompile("(?m)^\\| `(wsregistry_[a-z_]+)`").FindAllStringSubmatch(string(readme), -1) {
		documented[m[1]] = true
	}
	p := parser.NewParser(parser.Options{})
	used := map[string]bool{}
	queries := 0
	for _, pn := range queryPanels(d) {
		for _, tg := range pn.Targets {
			queries++
			expr, err := p.ParseExpr(Expand(tg.Expr))
			if err != nil {
				t.Errorf("panel %q query %s: %v\n  %s", pn.Title, tg.RefID, err, tg.Expr)
				continue
			}
			parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
				vs, ok := n.(*parser.VectorSelector)
				if !ok {
					return nil
				}
				name := vs.Name
				used[name] = true
				base := name
				for _, suffix := range []string{"_sum", "_count", "_bucket"} {
					base = strings.TrimSuffix(base, suffix)
				}
				if !documented[name] && !documented[base] {
					t.Errorf("panel %q: %s is not in the README's metrics table", pn.Title, name)
				}
				return nil
			})
		}
	}
	if queries < 20 {
		t.Fatalf("only %d queries found: is the panel structure read right?", queries)
	}
	for _, want := range []string{
		"wsregistry_ready", "wsregistry_raft_state", "wsregistry_raft_state_changes_total", // health, leader changes
		"wsregistry_raft_commit_seconds_sum", "wsregistry_raft_fsm_apply_seconds_sum", // commit and apply latency
		"wsregistry_ws_requests_total", "wsregistry_http_lookups_total", // registrations/s, lookups/s
		"wsregistry_agent_connections",                                                        // agents per node
		"wsregistry_fetch_duration_seconds_count", "wsregistry_fetch_duration_seconds_bucket", // proxied calls, errors
		"wsregistry_fenced", "wsregistry_purges_total", // fences, purges
		"wsregistry_auth_refusals_total", "wsregistry_limit_refusals_total", // refusals
	} {
		if !used[want] {
			t.Errorf("no panel queries %s", want)
		}
	}
}

// A broken query is caught: the parser is not accepting everything.
func TestDashboard_ParserRejectsABrokenQuery(t *testing.T) {
	if _, err := parser.NewParser(parser.Options{}).ParseExpr(Expand(`sum(rate(wsregistry_writes_total{job=~"$job"}[$__rate_interval])`)); err == nil {
		t.Fatal("an unclosed parenthesis parsed")
	}
}
