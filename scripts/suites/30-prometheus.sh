#!/usr/bin/env bash
# A real scrape: a three-node local cluster, Debian's Prometheus with the config shipped in
# deploy/prometheus/prometheus-local.yml, and queries through Prometheus's HTTP API for `up`
# and wsregistry_registrations on all three nodes. Also `promtool check config` on every
# shipped config, and the Kubernetes config's relabelling exercised on static targets that
# carry the pod annotations (Debian's Prometheus is built without kubernetes_sd).
# WSREGISTRY_PROM_HOST (default 127.0.6.1) is the loopback address for everything it starts.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh

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

cleanup() {
  local rc=$?
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

say "three-node local cluster on $host"
WSREGISTRY_CLUSTER_HOST="$host" WSREGISTRY_CLUSTER_DIR="$work/cluster" \
  WSREGISTRY_EXTRA_FLAGS="${WSREGISTRY_EXTRA_FLAGS:---raft-no-sync}" scripts/local-cluster.sh start 3

# One agent, so the registration gauge is 1 on every node (it is replicated state).
"$work/cluster/wsregistry" agent-demo --registry "$host:$base" --namespace prom-check --listen "$host:9427" \
  >"$work/agent.log" 2>&1 &
agent_pid=$!

say "Prometheus with deploy/prometheus/prometheus-local.yml (unchanged) on $host:$prom_port"
mkdir -p "$work/local"
cp deploy/prometheus/prometheus-local.yml "$work/local/"
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

say "the Kubernetes config's relabelling, on static targets with pod annotations"
# kubernetes_sd_configs is replaced by targets carrying the labels it would discover: one pod
# annotated for scraping on port 8438 (its discovered address has no port), one not annotated.
mkdir -p "$work/k8s"
awk -v h="$host" '
  /kubernetes_sd_configs:/ {
    ind = substr($0, 1, index($0, "k") - 1)
    print ind "static_configs:"
    print ind "  - targets: [\"" h "\"]"
    print ind "    labels:"
    print ind "      __meta_kubernetes_pod_annotation_prometheus_io_scrape: \"true\""
    print ind "      __meta_kubernetes_pod_annotation_prometheus_io_port: \"8438\""
    print ind "      __meta_kubernetes_pod_annotation_prometheus_io_path: /metrics"
    print ind "      __meta_kubernetes_pod_phase: Running"
    print ind "      __meta_kubernetes_namespace: registry"
    print ind "      __meta_kubernetes_pod_name: wsregistry-1"
    print ind "      __meta_kubernetes_pod_label_app_kubernetes_io_name: wsregistry"
    print ind "  - targets: [\"" h ":8448\"]"
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
wait_for $((prom_port + 1)) 'up{job="kubernetes-pods",pod="wsregistry-1",namespace="registry",app="wsregistry",instance="'"$host"':8438"} == 1' 1 \
  "annotated pod scraped on its annotated port"
n=$(query $((prom_port + 1)) 'count(up{job="kubernetes-pods"})' | awk '{print $2}')
if [ "$n" != "1" ]; then echo "FAIL: the pod without annotations was scraped too ($n targets)" >&2; exit 1; fi

say "prometheus suite passed"
