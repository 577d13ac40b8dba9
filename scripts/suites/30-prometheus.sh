#!/usr/bin/env bash
# A real scrape: a three-node local cluster, Debian's Prometheus with the config shipped in
# deploy/prometheus/prometheus-local.yml, and queries through Prometheus's HTTP API for `up`
# and wsregistry_registrations on all three nodes. Also `promtool check config` on every
# shipped config, and the Kubernetes config's relabelling exercised on static targets that
# carry the pod annotations (Debian's Prometheus is built without kubernetes_sd).
# The Grafana dashboard (deploy/grafana/wsregistry.json): its module's Go test parses every
# query with Prometheus' PromQL parser, and here every query is evaluated against the live
# cluster (under load, with a snapshot taken and a node restarted from it) and must return data.
# The alert rules: `promtool check rules` and `promtool test rules` (35-alerts.sh fires them).
# WSREGISTRY_PROM_HOST (default 127.0.6.1) is the loopback address for everything it starts.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh

say "go vet and go test (deploy/grafana module: the dashboard's queries through the PromQL parser)"
# A module of its own so the main module does not depend on Prometheus itself.
(cd deploy/grafana && go vet ./... && go test -count=1 ./...)

need_tool prometheus prometheus || exit 0
need_tool promtool prometheus || exit 0
need_tool curl curl || exit 0
need_tool jq jq || exit 0

host="${WSREGISTRY_PROM_HOST:-127.0.6.1}"
# Node 0 on 8437, not the default 8427: a registry someone runs with no flags listens on
# the wildcard address's 8427-8429, which no other address can bind beside it.
export WSREGISTRY_CLUSTER_PORT="${WSREGISTRY_PROM_CLUSTER_PORT:-8437}"
base="$WSREGISTRY_CLUSTER_PORT"
prom_port=9090
work=$(mktemp -d /tmp/wsregistry-prom.XXXXXX)
prom_pids=()
agent_pid=""
load_pid=""

cleanup() {
  local rc=$?
  [ -n "$load_pid" ] && { kill "$load_pid" 2>/dev/null; wait "$load_pid" 2>/dev/null; } || true
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null || true
  for p in "${prom_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${prom_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  WSREGISTRY_CLUSTER_HOST="$host" WSREGISTRY_CLUSTER_DIR="$work/cluster" scripts/local-cluster.sh stop >/dev/null 2>&1 || true
  if [ "$rc" -ne 0 ]; then
    echo "--- logs kept in $work" >&2
    for f in "$work"/*.log "$work"/cluster/node*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
    if [ -n "${WSREGISTRY_TEST_ARTIFACTS:-}" ]; then mkdir -p "$WSREGISTRY_TEST_ARTIFACTS/prometheus" && cp -r "$work"/*.log "$WSREGISTRY_TEST_ARTIFACTS/prometheus/" 2>/dev/null || true; fi
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

say "promtool check config (every shipped config)"
for f in deploy/prometheus/prometheus-*.yml; do
  if out=$(promtool check config "$f" 2>&1); then
    echo "$out"
  elif grep -q "kubernetes_sd_configs not found" <<<"$out"; then
    echo "$f: this promtool is built without kubernetes_sd (Debian strips it); its relabelling is checked below on static targets"
  else
    echo "$out" >&2
    echo "FAIL: promtool rejects $f" >&2
    exit 1
  fi
done

# query PORT PROMQL: prints the result vector as "instance value" lines.
query() {
  curl -fsS --max-time 5 "http://$host:$1/api/v1/query" --data-urlencode "query=$2" |
    jq -r '.data.result[] | "\(.metric.instance) \(.value[1])"'
}

# wait_for PORT PROMQL WANT_LINES WHAT: waits until the query returns WANT_LINES series, all with
# value >= 1 where WHAT says so; prints what Prometheus answered when it gives up.
wait_for() {
  local port="$1" q="$2" want="$3" what="$4" got=""
  for _ in $(seq 1 120); do
    got=$(query "$port" "$q" 2>/dev/null || true)
    if [ "$(grep -c . <<<"$got")" -eq "$want" ]; then
      echo "$what:"; sed 's/^/  /' <<<"$got"
      return 0
    fi
    sleep 0.5
  done
  echo "FAIL: $what: want $want series from '$q', Prometheus answered:" >&2
  echo "${got:-(nothing)}" >&2
  curl -fsS "http://$host:$port/api/v1/targets" | jq -r '.data.activeTargets[] | "  target \(.scrapeUrl) \(.health) \(.lastError)"' >&2 || true
  return 1
}

start_prometheus() { # CONFIG PORT NAME
  prometheus --config.file="$1" --storage.tsdb.path="$work/tsdb-$3" \
    --web.listen-address="$host:$2" --log.level=warn >"$work/prometheus-$3.log" 2>&1 &
  prom_pids+=($!)
  for _ in $(seq 1 100); do
    curl -fsS --max-time 1 "http://$host:$2/-/ready" >/dev/null 2>&1 && return 0
    kill -0 "${prom_pids[-1]}" 2>/dev/null || { echo "FAIL: prometheus ($3) exited; see $work/prometheus-$3.log" >&2; cat "$work/prometheus-$3.log" >&2; return 1; }
    sleep 0.2
  done
  echo "FAIL: prometheus ($3) not ready on $host:$2" >&2
  return 1
}

say "promtool check rules and test rules (deploy/prometheus/alerts.yml)"
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts_test.yml)

say "three-node local cluster on $host"
# Snapshots every few entries, so the dashboard's snapshot and restore panels have data.
WSREGISTRY_CLUSTER_HOST="$host" WSREGISTRY_CLUSTER_DIR="$work/cluster" \
  WSREGISTRY_EXTRA_FLAGS="${WSREGISTRY_EXTRA_FLAGS:---raft-no-sync} --snapshot-threshold 4 --snapshot-interval 1s" \
  scripts/local-cluster.sh start 3
bin="$work/cluster/wsregistry"

# One agent, so the registration gauge is 1 on every node (it is replicated state).
"$bin" agent-demo --registry "$host:$base" --namespace prom-check --listen "$host:9427" --advertise "$host" \
  >"$work/agent.log" 2>&1 &
agent_pid=$!

say "Prometheus with deploy/prometheus/prometheus-local.yml (unchanged) on $host:$prom_port"
mkdir -p "$work/local"
cp deploy/prometheus/prometheus-local.yml deploy/prometheus/alerts.yml "$work/local/"
# The shipped targets file names 127.0.0.1 and node 0 on 8427; this run's cluster is on $host
# from $base.
jq --arg h "$host" --argjson shift $((base - 8427)) \
  '.[0].targets |= map(capture("^[^:]*:(?<p>[0-9]+)$") | $h + ":" + ((.p | tonumber) + $shift | tostring))' \
  deploy/prometheus/local-targets.json >"$work/local/local-targets.json"
start_prometheus "$work/local/prometheus-local.yml" "$prom_port" local

start=$(date +%s)
wait_for "$prom_port" 'up{job="wsregistry"} == 1' 3 "up == 1 for all three nodes"
wait_for "$prom_port" 'wsregistry_registrations{job="wsregistry"} == 1' 3 "wsregistry_registrations == 1 on all three nodes"
wait_for "$prom_port" 'wsregistry_ready{job="wsregistry"} == 1' 3 "wsregistry_ready == 1 on all three nodes"
echo "scraped and queried in $(( $(date +%s) - start )) s"

say "every query of the Grafana dashboard returns data"
# node2 restarts from its own snapshot: raft restores the state from it (the restore panel).
m2="http://$host:$((base + 21))/metrics"
for _ in $(seq 1 100); do
  idx=$(curl -fsS --max-time 2 "$m2" | awk '$1 == "wsregistry_raft_last_snapshot_index" {print $2}')
  [ "${idx:-0}" != "0" ] && break
  sleep 0.2
done
[ "${idx:-0}" != "0" ] || { echo "FAIL: node2 took no snapshot (--snapshot-threshold 4)" >&2; exit 1; }
pid2=$(cat "$work/cluster/node2.pid")
mapfile -d '' node2_cmd <"/proc/$pid2/cmdline"
kill -INT "$pid2"
for _ in $(seq 1 100); do kill -0 "$pid2" 2>/dev/null || break; sleep 0.1; done
"${node2_cmd[@]}" >>"$work/cluster/node2.log" 2>&1 &
echo $! >"$work/cluster/node2.pid"
for _ in $(seq 1 100); do "$bin" healthcheck --addr "$host:$((base + 21))" >/dev/null 2>&1 && break; sleep 0.2; done
"$bin" healthcheck --addr "$host:$((base + 21))" >/dev/null || { echo "FAIL: node2 not ready after its restart" >&2; exit 1; }
echo "node2 restarted from its snapshot at index $idx"

# Load while the queries run: HTTP lookups and proxied calls on every node, and an agent that
# comes and goes (registrations, so commits).
load() {
  local i=0 node churn=""
  trap '[ -n "$churn" ] && kill "$churn" 2>/dev/null; exit 0' TERM
  while :; do
    i=$((i + 1)); node=$((i % 3))
    "$bin" where --addr "$host:$((base + 1 + 10 * node))" prom-check >/dev/null 2>&1 || true
    "$bin" fetch --addr "$host:$((base + 1 + 10 * node))" prom-check/echo '["x"]' >/dev/null 2>&1 || true
    if [ $((i % 4)) -eq 0 ]; then
      if [ -n "$churn" ]; then kill "$churn" 2>/dev/null || true; wait "$churn" 2>/dev/null || true; churn=""
      else
        "$bin" agent-demo --registry "$host:$((base + 10 * node))" --namespace prom-churn --listen "$host:9428" --advertise "$host" >/dev/null 2>&1 &
        churn=$!
      fi
    fi
    sleep 0.2
  done
}
load &
load_pid=$!

mapfile -t exprs < <(jq -r '.panels[] | ., (.panels // [])[] | .targets[]? | .expr' deploy/grafana/wsregistry.json |
  sed -e 's/\$__rate_interval/1m/g' -e 's/\$__interval/15s/g' -e 's/\$__range/1h/g' -e 's/\${job}/.+/g' -e 's/\$job/.+/g')
[ "${#exprs[@]}" -ge 20 ] || { echo "FAIL: only ${#exprs[@]} queries read from the dashboard" >&2; exit 1; }
# data EXPR: how many series the query returns with a number (not NaN).
data() {
  curl -fsS --max-time 5 "http://$host:$prom_port/api/v1/query" --data-urlencode "query=$1" |
    jq '[.data.result[] | .value[1] | select(. != "NaN")] | length'
}
pending=("${exprs[@]}")
for _ in $(seq 1 60); do
  still=()
  for e in "${pending[@]}"; do
    n=$(data "$e" 2>/dev/null || echo 0)
    if [ "${n:-0}" -gt 0 ]; then echo "  $n series: $e"; else still+=("$e"); fi
  done
  pending=("${still[@]}")
  [ "${#pending[@]}" -eq 0 ] && break
  sleep 2
done
if [ "${#pending[@]}" -gt 0 ]; then
  echo "FAIL: dashboard queries without data after 2 minutes:" >&2
  for e in "${pending[@]}"; do
    echo "  $e" >&2
    curl -fsS --max-time 5 "http://$host:$prom_port/api/v1/query" --data-urlencode "query=$e" | jq -c '.data.result' >&2 || true
  done
  exit 1
fi
echo "all ${#exprs[@]} dashboard queries returned data"
kill "$load_pid"; wait "$load_pid" 2>/dev/null || true; load_pid=""

say "the Kubernetes config's relabelling, on static targets with pod annotations"
# kubernetes_sd_configs is replaced by targets carrying the labels it would discover: one pod
# annotated for scraping on node 1's HTTP port (its discovered address has no port), one not annotated.
mkdir -p "$work/k8s"
cp deploy/prometheus/alerts.yml "$work/k8s/"
awk -v h="$host" -v p1=$((base + 11)) -v p2=$((base + 21)) '
  /kubernetes_sd_configs:/ {
    ind = substr($0, 1, index($0, "k") - 1)
    print ind "static_configs:"
    print ind "  - targets: [\"" h "\"]"
    print ind "    labels:"
    print ind "      __meta_kubernetes_pod_annotation_prometheus_io_scrape: \"true\""
    print ind "      __meta_kubernetes_pod_annotation_prometheus_io_port: \"" p1 "\""
    print ind "      __meta_kubernetes_pod_annotation_prometheus_io_path: /metrics"
    print ind "      __meta_kubernetes_pod_phase: Running"
    print ind "      __meta_kubernetes_namespace: registry"
    print ind "      __meta_kubernetes_pod_name: wsregistry-1"
    print ind "      __meta_kubernetes_pod_label_app_kubernetes_io_name: wsregistry"
    print ind "  - targets: [\"" h ":" p2 "\"]"
    print ind "    labels:"
    print ind "      __meta_kubernetes_pod_phase: Running"
    print ind "      __meta_kubernetes_pod_name: not-annotated"
    skip = 1; next
  }
  skip && /- role: pod/ { skip = 0; next }
  /scrape_interval:/ { sub(/15s/, "2s") }
  { print }
' deploy/prometheus/prometheus-kubernetes.yml >"$work/k8s/prometheus.yml"
promtool check config "$work/k8s/prometheus.yml"
start_prometheus "$work/k8s/prometheus.yml" $((prom_port + 1)) k8s
wait_for $((prom_port + 1)) 'up{job="kubernetes-pods",pod="wsregistry-1",namespace="registry",app="wsregistry",instance="'"$host:$((base + 11))"'"} == 1' 1 \
  "annotated pod scraped on its annotated port"
n=$(query $((prom_port + 1)) 'count(up{job="kubernetes-pods"})' | awk '{print $2}')
if [ "$n" != "1" ]; then echo "FAIL: the pod without annotations was scraped too ($n targets)" >&2; exit 1; fi

say "prometheus suite passed"
