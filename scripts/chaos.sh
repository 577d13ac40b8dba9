#!/usr/bin/env bash
# Chaos run: start a local cluster of real processes (three nodes by default) with the fault
# switch and a short node grace, then drive cmd/wschaos (200 churning agents, one fault per
# round, a checker after each round). Prints `rounds=… lost=… ghosts=… divergent=… doubled=…`
# and exits non-zero on any violation, or when a round ends without every node a member and
# the voters back at --voters.
#   scripts/chaos.sh [--rounds N] [other wschaos flags]
#   WSREGISTRY_CLUSTER_HOST  loopback address of the cluster (default 127.0.8.1; agents use .2-.9)
#   WSREGISTRY_CHAOS_GRACE   the nodes' --node-grace (default 2s)
#   WSREGISTRY_CHAOS_NODES   nodes (default 3); past WSREGISTRY_VOTERS (default 3) they are
#                            non-voters: 5 is three voters and two non-voters. With more nodes
#                            than voters, autopilot runs with --dead-server-timeout 2s and
#                            --stabilization-time 1s, so a voter killed, frozen or cut off for
#                            a round is replaced by a non-voter and comes back as one.
#   WSREGISTRY_CHAOS_KEEP=1  keep the cluster dir (logs) even when the run passes
# The node logs stay in the cluster dir printed at the start; on a failure they are copied
# to $WSREGISTRY_TEST_ARTIFACTS/chaos when that is set.
set -euo pipefail
cd "$(dirname "$0")/.."

export WSREGISTRY_CLUSTER_HOST="${WSREGISTRY_CLUSTER_HOST:-127.0.8.1}"
grace="${WSREGISTRY_CHAOS_GRACE:-2s}"
dir=$(mktemp -d /tmp/wsregistry-chaos.XXXXXX)
export WSREGISTRY_CLUSTER_DIR="$dir"
# --ping-interval 1s: frozen agents are noticed quickly; --raft-no-sync is not used, so a
# kill -9 exercises the real fsync'd log.
nodes="${WSREGISTRY_CHAOS_NODES:-3}"
voters="${WSREGISTRY_VOTERS:-3}"
autopilot=""
if [ "$nodes" -gt "$voters" ]; then autopilot="--dead-server-timeout 2s --stabilization-time 1s"; fi
export WSREGISTRY_EXTRA_FLAGS="--fault-injection --node-grace $grace --ping-interval 1s $autopilot ${WSREGISTRY_CHAOS_EXTRA_FLAGS:-}"

rc=0
cleanup() {
  # A node the harness left frozen would not stop on SIGINT.
  for pf in "$dir"/node*.pid; do
    [ -f "$pf" ] && kill -CONT "$(cat "$pf")" 2>/dev/null || true
  done
  scripts/local-cluster.sh stop >/dev/null 2>&1 || true
  if [ "$rc" -ne 0 ] && [ -n "${WSREGISTRY_TEST_ARTIFACTS:-}" ]; then
    mkdir -p "$WSREGISTRY_TEST_ARTIFACTS/chaos"
    cp "$dir"/*.log "$WSREGISTRY_TEST_ARTIFACTS/chaos/" 2>/dev/null || true
    echo "node logs copied to $WSREGISTRY_TEST_ARTIFACTS/chaos" >&2
  fi
  if [ "$rc" -eq 0 ] && [ -z "${WSREGISTRY_CHAOS_KEEP:-}" ]; then rm -rf "$dir"; else echo "cluster dir kept: $dir" >&2; fi
}
trap cleanup EXIT

echo "chaos: $nodes nodes ($voters voters) on $WSREGISTRY_CLUSTER_HOST in $dir (grace $grace)"
go build -o "$dir/wschaos" ./cmd/wschaos
scripts/local-cluster.sh start "$nodes"
set +e
"$dir/wschaos" --cluster-dir "$dir" --host "$WSREGISTRY_CLUSTER_HOST" --grace "$grace" --nodes "$nodes" --voters "$voters" "$@"
rc=$?
set -e
exit "$rc"
