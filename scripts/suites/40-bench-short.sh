#!/usr/bin/env bash
# Proves the benchmark tooling works: scripts/bench.sh --short (a second or so per workload,
# a 200-agent scale run) against real local clusters. The numbers are not checked: CI machines
# vary; BENCHMARKS.md holds measured ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh
say "bench.sh --short"
# Its own loopback address, so it never meets a cluster someone started by hand.
WSREGISTRY_CLUSTER_HOST="${WSREGISTRY_BENCH_HOST:-127.0.7.2}" timeout 300 scripts/bench.sh --short
