#!/usr/bin/env bash
# Run an N-node wsregistry cluster as local processes on 127.0.0.1, without Docker.
#   scripts/local-cluster.sh start [N]   build, start N nodes (default 3), wait for a leader;
#                                        past --voters (3) the others are non-voters: start 5
#                                        is 3 voters and 2 non-voters (WSREGISTRY_VOTERS=5: 5 voters)
#   scripts/local-cluster.sh status      members and leader as node 0 sees them
#   scripts/local-cluster.sh stop        stop the nodes this script started (by PID)
# Node i listens on P+10i (agents), P+1+10i (HTTP), P+2+10i (raft), P = $WSREGISTRY_CLUSTER_PORT
# (default 8427); P is kept in <dir>/port-base for the tools that find the nodes.
# Each node's PID is in <dir>/node<i>.pid, its log in <dir>/node<i>.log.
# State lives in $WSREGISTRY_CLUSTER_DIR (default: a temp dir, remembered in /tmp/wsregistry-local-cluster).
# Extra serve flags for every node: WSREGISTRY_EXTRA_FLAGS="--raft-no-sync --node-grace 5s".
# WSREGISTRY_VOTERS (the serve flag's environment twin, default 3, odd) is how many of the N
# nodes vote: every node gets --bootstrap-expect N, and the first cluster is formed with the
# first VOTERS nodes by id as voters and the rest as non-voters.
# WSREGISTRY_CLUSTER_HOST (default 127.0.0.1) picks another loopback address, so several
# clusters (a benchmark and a chaos run, say) can run side by side.
set -euo pipefail
cd "$(dirname "$0")/.."

host="${WSREGISTRY_CLUSTER_HOST:-127.0.0.1}"
state_file="/tmp/wsregistry-local-cluster-$host"
cmd="${1:-}"
n="${2:-3}"

cluster_dir() {
  if [ -n "${WSREGISTRY_CLUSTER_DIR:-}" ]; then echo "$WSREGISTRY_CLUSTER_DIR"
  elif [ -f "$state_file" ]; then cat "$state_file"
  fi
}

base="${WSREGISTRY_CLUSTER_PORT:-8427}"
http_port() { echo $((base + 1 + 10 * $1)); }

case "$cmd" in
start)
  dir=$(cluster_dir)
  if [ -n "$dir" ] && ls "$dir"/node*.pid >/dev/null 2>&1; then
    for pf in "$dir"/node*.pid; do
      if kill -0 "$(cat "$pf")" 2>/dev/null; then echo "already running in $dir (stop it first)" >&2; exit 1; fi
    done
  fi
  dir="${WSREGISTRY_CLUSTER_DIR:-$(mktemp -d /tmp/wsregistry-cluster.XXXXXX)}"
  mkdir -p "$dir"
  echo "$dir" > "$state_file"
  echo "$base" > "$dir/port-base"
  echo "building wsregistry into $dir/wsregistry"
  CGO_ENABLED=0 go build -o "$dir/wsregistry" ./cmd/wsregistry
  join=""
  # A one-node cluster bootstraps alone; --join would make it wait for peers.
  if [ "$n" -gt 1 ]; then
    for ((i = 0; i < n; i++)); do join+="${join:+,}$host:$((base + 2 + 10 * i))"; done
  fi
  for ((i = 0; i < n; i++)); do
    # shellcheck disable=SC2086
    "$dir/wsregistry" serve \
      --node-id "node$i" --data-dir "$dir/node$i" \
      --ws-addr "$host:$((base + 10 * i))" --http-addr "$host:$(http_port "$i")" --raft-addr "$host:$((base + 2 + 10 * i))" \
      --bootstrap-expect "$n" ${join:+--join "$join"} ${WSREGISTRY_EXTRA_FLAGS:-} \
      >"$dir/node$i.log" 2>&1 &
    echo $! > "$dir/node$i.pid"
  done
  echo "$n nodes starting; data and logs in $dir"
  for ((i = 0; i < n; i++)); do
    for _ in $(seq 1 200); do
      if "$dir/wsregistry" healthcheck --addr "$host:$(http_port "$i")" >/dev/null 2>&1; then break; fi
      sleep 0.1
    done
    if ! "$dir/wsregistry" healthcheck --addr "$host:$(http_port "$i")" >/dev/null 2>&1; then
      echo "node$i did not become ready; see $dir/node$i.log" >&2; exit 1
    fi
  done
  roles=""
  if [ "$n" -gt 1 ]; then
    # The bootstrap configuration holds every node; say how many of them vote.
    members=$("$dir/wsregistry" members --json --addr "$host:$(http_port 0)" 2>/dev/null || true)
    voters=$(grep -c '"suffrage": *"Voter"' <<<"$members" || true)
    nonvoters=$(grep -c '"suffrage": *"Nonvoter"' <<<"$members" || true)
    roles=" ($voters voters"
    [ "$nonvoters" = 0 ] || roles+=", $nonvoters non-voters"
    roles+=")"
  fi
  echo "cluster ready$roles: agents connect to $host:$base (or any $base+10i)"
  ;;
status)
  dir=$(cluster_dir)
  [ -n "$dir" ] || { echo "no local cluster known" >&2; exit 1; }
  [ -f "$dir/port-base" ] && base=$(cat "$dir/port-base")
  echo "cluster dir: $dir"
  for pf in "$dir"/node*.pid; do
    [ -f "$pf" ] || continue
    name=$(basename "$pf" .pid)
    if kill -0 "$(cat "$pf")" 2>/dev/null; then echo "$name: running (pid $(cat "$pf"))"; else echo "$name: stopped"; fi
  done
  for pf in "$dir"/node*.pid; do
    i=${pf##*node}; i=${i%.pid}
    if kill -0 "$(cat "$pf")" 2>/dev/null; then
      "$dir/wsregistry" members --addr "$host:$(http_port "$i")" && break
    fi
  done
  ;;
stop)
  dir=$(cluster_dir)
  [ -n "$dir" ] || { echo "no local cluster known" >&2; exit 0; }
  for pf in "$dir"/node*.pid; do
    [ -f "$pf" ] || continue
    pid=$(cat "$pf")
    if kill -0 "$pid" 2>/dev/null; then kill -INT "$pid"; fi
  done
  for pf in "$dir"/node*.pid; do
    [ -f "$pf" ] || continue
    pid=$(cat "$pf")
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then echo "pid $pid did not stop; killing" >&2; kill -KILL "$pid"; fi
    rm -f "$pf"
  done
  echo "stopped; data kept in $dir"
  rm -f "$state_file"
  ;;
*)
  sed -n '2,17p' "$0"; exit 2 ;;
esac
