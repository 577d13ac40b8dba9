#!/usr/bin/env bash
# The alert rules end to end: a three-node local cluster, Debian's Prometheus with the shipped
# deploy/prometheus/prometheus-local.yml (which loads alerts.yml) sending to Debian's
# Alertmanager; one follower is killed (SIGKILL, a crash) and Alertmanager must receive
# WsregistryNodeDown for that node and WsregistryMemberSilent from the leader (checked through
# its API). The rules are a test copy of alerts.yml with every `for:` cut to 2 s, scraped and
# evaluated every second, so the run takes seconds rather than minutes.
# WSREGISTRY_ALERTS_HOST (default 127.0.6.2) is the loopback address for everything it starts.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh

need_tool prometheus prometheus || exit 0
need_tool prometheus-alertmanager prometheus-alertmanager || exit 0
need_tool curl curl || exit 0
need_tool jq jq || exit 0

host="${WSREGISTRY_ALERTS_HOST:-127.0.6.2}"
# Not 8427 (a registry run by hand) nor 8437 (30-prometheus.sh).
export WSREGISTRY_CLUSTER_PORT="${WSREGISTRY_ALERTS_CLUSTER_PORT:-8447}"
base="$WSREGISTRY_CLUSTER_PORT"
prom_port=9190
am_port=9193
work=$(mktemp -d /tmp/wsregistry-alerts.XXXXXX)
pids=()

cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  WSREGISTRY_CLUSTER_HOST="$host" WSREGISTRY_CLUSTER_DIR="$work/cluster" scripts/local-cluster.sh stop >/dev/null 2>&1 || true
  if [ "$rc" -ne 0 ]; then
    echo "--- logs kept in $work" >&2
    for f in "$work"/*.log "$work"/cluster/node*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
    if [ -n "${WSREGISTRY_TEST_ARTIFACTS:-}" ]; then mkdir -p "$WSREGISTRY_TEST_ARTIFACTS/alerts" && cp -r "$work"/*.log "$WSREGISTRY_TEST_ARTIFACTS/alerts/" 2>/dev/null || true; fi
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

wait_ready() { # URL NAME PID LOG
  for _ in $(seq 1 100); do
    curl -fsS --max-time 1 "$1" >/dev/null 2>&1 && return 0
    kill -0 "$3" 2>/dev/null || { echo "FAIL: $2 exited" >&2; cat "$4" >&2; return 1; }
    sleep 0.2
  done
  echo "FAIL: $2 not ready at $1" >&2
  return 1
}

say "three-node local cluster on $host (--node-grace 3s)"
WSREGISTRY_CLUSTER_HOST="$host" WSREGISTRY_CLUSTER_DIR="$work/cluster" \
  WSREGISTRY_EXTRA_FLAGS="--raft-no-sync --node-grace 3s" scripts/local-cluster.sh start 3

say "Alertmanager on $host:$am_port"
mkdir -p "$work/am"
cat >"$work/am/alertmanager.yml" <<EOF
route:
  receiver: default
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: default
EOF
prometheus-alertmanager --config.file="$work/am/alertmanager.yml" --storage.path="$work/am" \
  --web.listen-address="$host:$am_port" --cluster.listen-address= --log.level=warn >"$work/alertmanager.log" 2>&1 &
pids+=($!)
wait_ready "http://$host:$am_port/-/ready" alertmanager "${pids[-1]}" "$work/alertmanager.log"

say "Prometheus with deploy/prometheus/prometheus-local.yml and a fast copy of alerts.yml"
mkdir -p "$work/prom"
# The shipped config, scraping and evaluating every second, with an Alertmanager.
sed -e 's/^\(  scrape_interval:\).*/\1 1s/' -e 's/^\(  evaluation_interval:\).*/\1 1s/' \
  -e 's/^\( *refresh_interval:\).*/\1 1s/' deploy/prometheus/prometheus-local.yml >"$work/prom/prometheus-local.yml"
cat >>"$work/prom/prometheus-local.yml" <<EOF
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["$host:$am_port"]
EOF
grep -q '^rule_files: \[alerts.yml\]' "$work/prom/prometheus-local.yml" ||
  { echo "FAIL: prometheus-local.yml does not load alerts.yml" >&2; exit 1; }
# The shipped rules, every `for:` cut to 2 s; nothing else changes.
sed -E 's/^( +for:) .*/\1 2s/' deploy/prometheus/alerts.yml >"$work/prom/alerts.yml"
[ "$(grep -c 'for: 2s' "$work/prom/alerts.yml")" -eq "$(grep -c ' for: ' deploy/prometheus/alerts.yml)" ] ||
  { echo "FAIL: not every for: was shortened" >&2; exit 1; }
jq --arg h "$host" --argjson shift $((base - 8427)) \
  '.[0].targets |= map(capture("^[^:]*:(?<p>[0-9]+)$") | $h + ":" + ((.p | tonumber) + $shift | tostring))' \
  deploy/prometheus/local-targets.json >"$work/prom/local-targets.json"
prometheus --config.file="$work/prom/prometheus-local.yml" --storage.tsdb.path="$work/prom/tsdb" \
  --web.listen-address="$host:$prom_port" --log.level=warn >"$work/prometheus.log" 2>&1 &
pids+=($!)
wait_ready "http://$host:$prom_port/-/ready" prometheus "${pids[-1]}" "$work/prometheus.log"

prom() { curl -fsS --max-time 5 "http://$host:$prom_port/api/v1/$1" "${@:2}"; }

# Before the kill: all three scraped, the rules evaluated since, and no wsregistry alert
# pending or firing (a rule that fires on a healthy cluster would pass the check below).
for _ in $(seq 1 100); do
  n=$(prom query --data-urlencode 'query=count(up{job="wsregistry"} == 1)' | jq -r '.data.result[0].value[1] // 0')
  [ "$n" = "3" ] && break
  sleep 0.2
done
[ "$n" = "3" ] || { echo "FAIL: Prometheus does not scrape all three nodes" >&2; exit 1; }
scraped=$(date +%s)
for _ in $(seq 1 100); do
  last=$(prom rules | jq -r '.data.groups[] | select(.name == "wsregistry") | .lastEvaluation')
  health=$(prom rules | jq -r '[.data.groups[] | select(.name == "wsregistry") | .rules[].health] | unique | join(",")')
  # Evaluated at least 3 s (longer than every for:) after all three were scraped.
  if [ -n "$last" ] && [ "$(date -d "$last" +%s 2>/dev/null || echo 0)" -ge $((scraped + 3)) ]; then break; fi
  sleep 0.2
done
[ "$health" = "ok" ] || { echo "FAIL: rule health '$health'" >&2; prom rules | jq . >&2; exit 1; }
active=$(prom alerts | jq -r '[.data.alerts[] | select(.labels.alertname | startswith("Wsregistry")) | "\(.labels.alertname) \(.state)"] | join("; ")')
[ -z "$active" ] || { echo "FAIL: alerts on a healthy cluster: $active" >&2; exit 1; }
echo "rules evaluated (last $last), none pending or firing on the healthy cluster"

say "kill a follower"
victim=""
for i in 0 1 2; do
  if curl -fsS --max-time 2 "http://$host:$((base + 1 + 10 * i))/metrics" | grep -q '^wsregistry_raft_state{state="follower"} 1'; then
    victim=$i
    break
  fi
done
[ -n "$victim" ] || { echo "FAIL: no follower found" >&2; exit 1; }
instance="$host:$((base + 1 + 10 * victim))"
kill -KILL "$(cat "$work/cluster/node$victim.pid")"
killed=$(date +%s.%N)
echo "node$victim ($instance) killed"

# received ALERTNAME JQ_FILTER: the alert as Alertmanager holds it, if it does.
received() {
  curl -fsS --max-time 5 "http://$host:$am_port/api/v2/alerts" --data-urlencode "filter=alertname=\"$1\"" -G |
    jq -c "[.[] | select($2) | {labels, startsAt, status: .status.state}] | .[0] // empty"
}
for want in "WsregistryNodeDown|.labels.instance == \"$instance\"" "WsregistryMemberSilent|.labels.cluster == \"local\""; do
  name=${want%%|*}
  filter=${want#*|}
  got=""
  for _ in $(seq 1 150); do
    got=$(received "$name" "$filter" 2>/dev/null || true)
    [ -n "$got" ] && break
    sleep 0.2
  done
  if [ -z "$got" ]; then
    echo "FAIL: Alertmanager did not receive $name ($filter) within 30 s of the kill" >&2
    echo "Prometheus' alerts:" >&2; prom alerts | jq -c '.data.alerts[]' >&2 || true
    echo "Alertmanager's alerts:" >&2; curl -fsS "http://$host:$am_port/api/v2/alerts" | jq -c '.[] | .labels' >&2 || true
    exit 1
  fi
  echo "$name received $(awk -v a="$(date +%s.%N)" -v b="$killed" 'BEGIN { printf "%.1f", a - b }') s after the kill: $got"
done

say "alerts suite passed"
