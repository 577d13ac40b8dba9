#!/usr/bin/env bash
# Chaos suite: a three-node local cluster of real processes, 200 churning agents, and one
# round of each fault (kill -9 leader, kill -9 follower, SIGSTOP/SIGCONT, partition,
# restart) with the checker after each (scripts/chaos.sh, cmd/wschaos; about a minute).
# Then five nodes, three voters and two non-voters, with autopilot replacing a voter that is
# down for 2 s: kill -9 of the leader, a partition and a kill -9 of a follower (about 40 s);
# after each round every node must be a member again, three of them voters.
# WSREGISTRY_CHAOS_ROUNDS and WSREGISTRY_CHAOS_ROUNDS_5 override the number of rounds.
# The long run is in RELIABILITY.md.
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

rounds5="${WSREGISTRY_CHAOS_ROUNDS_5:-3}"
say "chaos: five nodes (3 voters, 2 non-voters), $rounds5 rounds on $WSREGISTRY_CLUSTER_HOST"
WSREGISTRY_CHAOS_NODES=5 WSREGISTRY_VOTERS=3 bash scripts/chaos.sh --rounds "$rounds5" --faults kill-leader,partition,kill-follower
