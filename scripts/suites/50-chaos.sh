#!/usr/bin/env bash
# Chaos suite: a three-node local cluster of real processes, 200 churning agents, and one
# round of each fault (kill -9 leader, kill -9 follower, SIGSTOP/SIGCONT, partition,
# restart) with the checker after each (scripts/chaos.sh, cmd/wschaos; about a minute).
# WSREGISTRY_CHAOS_ROUNDS overrides the number of rounds. The long run is in RELIABILITY.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh

# Node 0 on 8437, not the default 8427: a registry someone runs with no flags listens on
# the wildcard address's 8427-8429, which no other address can bind beside it.
export WSREGISTRY_CLUSTER_PORT="${WSREGISTRY_CHAOS_CLUSTER_PORT:-8437}"

# A loopback address of its own, so it never meets the default ports other tests use.
export WSREGISTRY_CLUSTER_HOST="${WSREGISTRY_CHAOS_HOST:-127.0.8.1}"
rounds="${WSREGISTRY_CHAOS_ROUNDS:-5}"
say "chaos: $rounds rounds on $WSREGISTRY_CLUSTER_HOST"
bash scripts/chaos.sh --rounds "$rounds"
