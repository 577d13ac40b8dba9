#!/usr/bin/env bash
# Proves the benchmark tooling works: scripts/bench.sh --short (a second or so per workload,
# a 200-agent scale run) against real local clusters. The numbers are not checked: CI machines
# vary; BENCHMARKS.md holds measured ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh

# Node 0 on 8437, not the default 8427: a registry someone runs with no flags listens on
# the wildcard address's 8427-8429, which no other address can bind beside it.
export WSREGISTRY_CLUSTER_PORT="${WSREGISTRY_BENCH_CLUSTER_PORT:-8437}"
say "bench.sh --short"
# Its own loopback address, so it never meets a cluster someone started by hand.
WSREGISTRY_CLUSTER_HOST="${WSREGISTRY_BENCH_HOST:-127.0.7.2}" timeout 300 scripts/bench.sh --short
# The floor group (issue 14 item 4: where against the echo floor, like for like, in passes)
# is not a default group: one pass of each, and the verdict lines it exists for.
say "bench.sh --short --only floor"
floor=$(WSREGISTRY_CLUSTER_HOST="${WSREGISTRY_BENCH_HOST:-127.0.7.2}" timeout 300 scripts/bench.sh --short --only floor) ||
  { printf '%s\n' "$floor"; exit 1; }
tail -n 8 <<<"$floor"
for v in "3 nodes" "1 node"; do
  grep -q "like for like, $v: median of 1 " <<<"$floor" || { echo "no median line for $v in the floor group's output" >&2; exit 1; }
done
