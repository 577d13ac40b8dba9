// Package grafana holds no code: its test checks the dashboard next to it
// (wsregistry.json). It is a module of its own so that the main module does not depend on
// Prometheus itself, whose PromQL parser the test uses; run it with
// `cd deploy/grafana && go test ./...` (scripts/suites/30-prometheus.sh).
package grafana
