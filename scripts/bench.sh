#!/usr/bin/env bash
# The benchmark matrix of BENCHMARKS.md, on local clusters (scripts/local-cluster.sh, fsync on).
#   scripts/bench.sh           full matrix (about 8 minutes on 2 cores): appends to
#                              bench/results/<date>.jsonl and regenerates the table in BENCHMARKS.md
#   scripts/bench.sh --short   a second or so per workload, small scale test; results go to a
#                              temp file and BENCHMARKS.md is left alone (CI runs this to prove it works)
#   --only GROUPS              only these groups (comma-separated; BENCHMARKS.md is left alone):
#                                matrix    the rows of the Results table (rounds 1-4)
#                                patterns  one writer on the leader and on a follower, then
#                                          register (c=1,256), where and the echo floor (c=256, and paced
#                                          at $PACED_RATE/s) under both generator patterns,
#                                          pipelined and agent (round 5; about 3.5 minutes)
#                                anchor    only the etcd anchor (implies --anchor etcd)
#                                scale     one node: memory per idle connection and per registration,
#                                          snapshot, restart (also in matrix; SCALE_AGENTS and
#                                          SCALE_PER_AGENT override 10,000 x 10)
#                                voters    register (c=1,256) and where (c=256) with 3 voters, 3 voters +
#                                          4 non-voters (agents on all seven nodes, then on the voters
#                                          only) and 7 voters, in two passes, then the medians against
#                                          3 voters and each raft role's CPU per op (issue 18; about 4
#                                          minutes; not in the default groups)
#                                openloop  where paced at $OPENLOOP_RATE/s over 64 connections on three nodes
#                                          and on one, each followed by the echo floor in one and in
#                                          three processes, three passes: the p99s of issue 14 item 6
#                                          (about 3 minutes; not in the default groups)
#                                floor     where and the echo floor under the agent pattern, like for
#                                          like (three nodes against three echo processes, one node
#                                          against one), alternated in $FLOOR_PASSES passes (default 5):
#                                          each pass's CPU ratio and their median, issue 14 item 4
#                                          (about 2 minutes; not in the default groups)
#   --anchor etcd              after ours, the same register (c=1,256) and where (c=256) against a
#                              three-member etcd (Debian's etcd-server, installed with apt-get when
#                              `etcd` is missing; fsync on) on $ETCD_ANCHOR_NET.1-3, then the ratios
#   --out FILE                 append the result lines to FILE instead (BENCHMARKS.md is left alone)
#   e.g. scripts/bench.sh --only patterns --anchor etcd     (round 5's rows, ~4 minutes)
# WSREGISTRY_CLUSTER_HOST picks the loopback address (default 127.0.7.1); fake agents use
# identities 127.0.7.x:port (only names in URLs: nothing listens there).
set -euo pipefail
cd "$(dirname "$0")/.."

short=false
groups="matrix,patterns"
anchor=""
only=false
out_arg=""
while [ $# -gt 0 ]; do
  case "$1" in
  --short) short=true ;;
  --only) groups="${2:?--only needs groups}"; only=true; shift ;;
  --anchor) anchor="${2:?--anchor needs a kind (etcd)}"; shift ;;
  --out) out_arg="${2:?--out needs a file}"; shift ;;
  *) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0" >&2; exit 2 ;;
  esac
  shift
done
case ",$groups," in *,anchor,*) anchor="${anchor:-etcd}" ;; esac
[ -z "$anchor" ] || [ "$anchor" = etcd ] || { echo "--anchor: only etcd is known" >&2; exit 2; }
for g in ${groups//,/ }; do
  case "$g" in matrix | patterns | anchor | scale | voters | openloop | floor) ;; *) echo "--only: unknown group $g" >&2; exit 2 ;; esac
done
has() { case ",$groups," in *,"$1",*) return 0 ;; esac; return 1; }
export WSREGISTRY_CLUSTER_HOST="${WSREGISTRY_CLUSTER_HOST:-127.0.7.1}"
host="$WSREGISTRY_CLUSTER_HOST"
# Node 0's agent port (local-cluster.sh's WSREGISTRY_CLUSTER_PORT).
export WSREGISTRY_CLUSTER_PORT="${WSREGISTRY_CLUSTER_PORT:-8427}"
port="$WSREGISTRY_CLUSTER_PORT"
# The anchor's members listen on $ETCD_ANCHOR_NET.1, .2 and .3 (ports 2379 and 2380).
ETCD_ANCHOR_NET="${ETCD_ANCHOR_NET:-127.0.9}"
# The open-loop rate of the patterns group: well under what either pattern reaches closed-loop
# on 2 cores, so both run unsaturated at the same rate.
PACED_RATE="${PACED_RATE:-20000}"
# The open-loop group's rate: half the 100,000/s that where reached closed-loop (issue 14 item 6).
OPENLOOP_RATE="${OPENLOOP_RATE:-50000}"

# 10,000 agent connections are 20,000 sockets on this machine (both ends), plus the nodes'.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 25000 ]; then
  echo "note: ulimit -n is $(ulimit -n); the 10,000-agent runs may fail (raise the hard limit)" >&2
fi

work=$(mktemp -d /tmp/wsbench.XXXXXX)
cluster_dir=""
stop_cluster() {
  if [ -n "$cluster_dir" ]; then
    WSREGISTRY_CLUSTER_DIR="$cluster_dir" scripts/local-cluster.sh stop >/dev/null 2>&1 || true
    rm -rf "$cluster_dir"
    cluster_dir=""
  fi
}
etcd_dir=""
etcd_pids=()
stop_etcd() {
  local pid
  for pid in "${etcd_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${etcd_pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then echo "etcd pid $pid did not stop; killing" >&2; kill -KILL "$pid" 2>/dev/null || true; fi
  done
  etcd_pids=()
  if [ -n "$etcd_dir" ]; then rm -rf "$etcd_dir"; etcd_dir=""; fi
}
trap 'stop_cluster; stop_etcd; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# start_etcd: three members on $ETCD_ANCHOR_NET.1-3 with their own data dirs, fsync on (etcd's
# default), logs in $etcd_dir/e<i>.log; PIDs in etcd_pids, stopped by the EXIT trap.
start_etcd() {
  if ! command -v etcd >/dev/null 2>&1; then
    echo "== installing etcd-server (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
    command -v etcd >/dev/null 2>&1 || { echo "etcd still missing after installing etcd-server" >&2; exit 1; }
  fi
  etcd_dir=$(mktemp -d /tmp/wsbench-etcd.XXXXXX)
  local i ip members="" eps=""
  for i in 0 1 2; do
    ip="$ETCD_ANCHOR_NET.$((i + 1))"
    members+="${members:+,}e$i=http://$ip:2380"
    eps+="${eps:+,}$ip:2379"
  done
  for i in 0 1 2; do
    ip="$ETCD_ANCHOR_NET.$((i + 1))"
    etcd --name "e$i" --data-dir "$etcd_dir/e$i" \
      --listen-client-urls "http://$ip:2379" --advertise-client-urls "http://$ip:2379" \
      --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
      --initial-cluster "$members" --initial-cluster-token wsbench-anchor --initial-cluster-state new \
      --logger zap --log-outputs stderr --log-level warn \
      >"$etcd_dir/e$i.log" 2>&1 &
    etcd_pids+=($!)
  done
  etcd_endpoints="$eps"
  "$work/etcdbench" -endpoints "$etcd_endpoints" -wait 60s ||
    { tail -n 20 "$etcd_dir"/e*.log >&2; exit 1; }
}

# start_cluster N EXTRA_FLAGS
start_cluster() {
  stop_cluster
  cluster_dir=$(mktemp -d /tmp/wsbench-cluster.XXXXXX)
  WSREGISTRY_CLUSTER_DIR="$cluster_dir" WSREGISTRY_EXTRA_FLAGS="$2" scripts/local-cluster.sh start "$1" >"$work/cluster.log" 2>&1 ||
    { cat "$work/cluster.log" >&2; exit 1; }
}

# start_single EXTRA_FLAGS: one node laid out as local-cluster.sh's node0, started here because
# local-cluster.sh passes --join (its own address) even for one node, and such a node waits for
# peers instead of bootstrapping (reported to the lead).
start_single() {
  stop_cluster
  cluster_dir=$(mktemp -d /tmp/wsbench-cluster.XXXXXX)
  CGO_ENABLED=0 go build -o "$cluster_dir/wsregistry" ./cmd/wsregistry
  # shellcheck disable=SC2086
  "$cluster_dir/wsregistry" serve --node-id node0 --data-dir "$cluster_dir/node0" \
    --ws-addr "$host:$port" --http-addr "$host:$((port + 1))" --raft-addr "$host:$((port + 2))" $1 \
    >"$cluster_dir/node0.log" 2>&1 &
  echo $! >"$cluster_dir/node0.pid"
  echo "$port" >"$cluster_dir/port-base"
  for _ in $(seq 1 100); do
    "$cluster_dir/wsregistry" healthcheck --addr "$host:$((port + 1))" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "single node did not become ready; see $cluster_dir/node0.log" >&2
  exit 1
}

# start_nodes N EXTRA_FLAGS: one node (start_single) or an N-node cluster.
start_nodes() {
  if [ "$1" = 1 ]; then start_single "$2"; else start_cluster "$1" "$2"; fi
}

go build -o "$work/wsbench" ./cmd/wsbench
if [ -n "$anchor" ]; then
  # etcd's client lives in its own module, so the registry's go.mod stays lean.
  (cd bench/etcd && go build -o "$work/etcdbench" .)
fi
run=$(date -u +%Y%m%dT%H%M%SZ)
if $short; then
  out="$work/short.jsonl"; dur=1s; fo_dur=4s; agents=200; scale_agents=200; per_agent=5; agent_conns=200
else
  mkdir -p bench/results
  out="bench/results/$(date -u +%F).jsonl"; dur=5s; fo_dur=12s; agents=10000; scale_agents=10000; per_agent=10
  agent_conns=1000
fi
[ -z "$out_arg" ] || out="$out_arg"
bench() { "$work/wsbench" -host "$host" -cluster-dir "$cluster_dir" -run "$run" -out "$out" "$@" >/dev/null; }
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

if has matrix; then
  echo "== three nodes, fsync on, group commit on (default --group-commit-max 1024)"
  # One generator connection stands for many agents: lift the per-connection request limit
  # (10,000/s by default), which a single connection at c=1 now exceeds (its 429s are not latency).
  start_cluster 3 "--max-requests-per-second -1"
  bench -nodes 3 -workload register -c 1,16,256 -duration "$dur"
  bench -nodes 3 -workload where-paced -c 1,16,256 -duration "$dur"
  # The target figures again, five times each: this machine's runs vary by 10-20% from one
  # minute to the next, so BENCHMARKS.md quotes their median and range.
  if ! $short; then
    bench -nodes 3 -workload register -c 256,256,256,256,256 -duration "$dur" -label repeat
    bench -nodes 3 -workload where -c 256,256,256,256,256 -duration "$dur" -label repeat
  fi
  # Fixed rates over 64 and over 8 connections (the conns column tells the runs apart):
  # 50,000/s is half the 100,000/s target. Each is also run against the echo floor (a server
  # process that answers every frame at once): what loopback TCP, the Go runtime and the
  # shared cores cost without the registry.
  for rate in 10000 50000 96000; do
    for k in 64 8; do
      [ "$rate" = 96000 ] && [ "$k" = 64 ] && continue # the half-rate run above covers it
      bench -nodes 3 -workload where-paced -c 256 -k "$k" -rate "$rate" -duration "$dur"
      bench -workload echo-paced -k "$k" -rate "$rate" -duration "$dur"
    done
  done
  bench -nodes 3 -workload fetch -variant direct,proxied,proxied-remote -c 1,64 -duration "$dur"
  bench -nodes 3 -workload failover -duration "$fo_dur"
  bench -nodes 3 -workload reregister -agents "$agents"

  echo "== three nodes, fsync on, group commit off (--group-commit-max 1)"
  start_cluster 3 "--max-requests-per-second -1 --group-commit-max 1"
  bench -nodes 3 -workload register -c 1,16,256 -duration "$dur" -label "group commit off"

fi

if has matrix || has scale; then
  scale_agents="${SCALE_AGENTS:-$scale_agents}"; per_agent="${SCALE_PER_AGENT:-$per_agent}"
  echo "== one node: $scale_agents agents x $per_agent registrations, snapshot, restart"
  start_single "--pprof --snapshot-threshold 16 --snapshot-interval 1s"
  # 512 agents x per_agent onlines in flight at once: on a loaded machine the last replies of
  # a million take longer than the default 10 s reply timeout.
  bench -nodes 1 -workload scale -agents "$scale_agents" -per-agent "$per_agent" -timeout 120s
fi

if has voters; then
  # Every configuration in each pass, so that the machine's drift over the minutes falls on
  # all of them alike. In the 3 + 4 cluster node0-2 vote (the first three ids at bootstrap):
  # -entry 3 puts the agents on them only, which leaves replication to the non-voters as the
  # only difference from the 3-voter cluster; spread over all seven, followers' forwarding and
  # seven processes on the same cores count too.
  passes=2
  if $short; then passes=1; fi
  for pass in $(seq 1 "$passes"); do
    echo "== voters, pass $pass of $passes: 3 voters; 3 voters + 4 non-voters; 7 voters (fsync on)"
    for cfg in "3 3" "7 3" "7 7"; do
      read -r nodes voters <<<"$cfg"
      start_cluster "$nodes" "--max-requests-per-second -1 --voters $voters --rebalance=false"
      label="$voters voters"
      [ "$nodes" = "$voters" ] || label+=" + $((nodes - voters)) non-voters"
      bench -nodes "$nodes" -roles -workload register -c 1,256,256 -duration "$dur" -label "$label"
      bench -nodes "$nodes" -roles -workload where -c 256,256 -duration "$dur" -label "$label"
      if [ "$nodes" != "$voters" ]; then
        bench -nodes "$nodes" -roles -entry "$voters" -workload register -c 256,256 -duration "$dur" -label "$label, agents on the voters"
      fi
    done
  done
fi

if has openloop; then
  # Each where run is followed by the echo floor of the same shape, in one process and in
  # three (as many as the nodes: each process pays its own wake-ups), so the machine's drift
  # over the minutes falls on both; three passes, as one run's p99 moves by 10-20% here.
  passes=3
  if $short; then passes=1; fi
  for nodes in 3 1; do
    echo "== open loop: where at $OPENLOOP_RATE/s over 64 connections, $nodes node(s), $passes passes"
    label="3 nodes"
    [ "$nodes" = 1 ] && label="1 node"
    start_nodes "$nodes" "--max-requests-per-second -1"
    for _ in $(seq 1 "$passes"); do
      bench -nodes "$nodes" -workload where-paced -c 256 -k 64 -rate "$OPENLOOP_RATE" -duration "$dur" -label "$label"
      bench -workload echo-paced -k 64 -rate "$OPENLOOP_RATE" -duration "$dur"
      bench -workload echo-paced -k 64 -rate "$OPENLOOP_RATE" -duration "$dur" -echo-procs 3
    done
  done
fi

if has floor; then
  # One run's where/echo ratio moves by 10-20% here from one minute to the next: alternating
  # the two, pass after pass, lets the machine's drift fall on both, and the median of the
  # passes' ratios is the verdict (each process counts: three nodes against three echo
  # processes, one node against one).
  passes="${FLOOR_PASSES:-5}"
  if $short; then passes=1; fi
  for nodes in 3 1; do
    echo "== item 4: where and the echo floor under the agent pattern, $nodes node(s) against $nodes process(es), $passes passes"
    label="like for like, 3 nodes"
    [ "$nodes" = 1 ] && label="like for like, 1 node"
    start_nodes "$nodes" "--max-requests-per-second -1"
    pat=(-pattern agent -conns "$agent_conns" -duration "$dur")
    for _ in $(seq 1 "$passes"); do
      bench -nodes "$nodes" "${pat[@]}" -workload where -c 256 -label "$label"
      bench "${pat[@]}" -workload echo -c 256 -echo-procs "$nodes"
    done
  done
fi

# Round 5's rows run last on our side, so that the anchor follows them within a minute.
if has patterns; then
  echo "== generator patterns: pipelined, then agent ($agent_conns connections, 4 in flight on each busy one)"
  start_cluster 3 "--max-requests-per-second -1"
  # Each where run is followed by the echo floor in the same shape: the ratio of their server
  # CPU per op is the registry's own cost under that pattern. The floor runs twice: in one
  # process (the target's floor, as in the matrix) and spread over three, as many processes as
  # the cluster has (each process pays its own wake-ups; -echo-procs 3).
  # One writer on the leader, then on a follower (issue 14: a follower's online within the
  # leader's p50 + 0.5 ms), back to back, twice.
  for _ in 1 2; do
    bench -nodes 3 -on leader -workload register -c 1 -duration "$dur"
    bench -nodes 3 -on follower -workload register -c 1 -duration "$dur"
  done
  for p in pipelined agent; do
    pat=(-pattern "$p" -conns "$agent_conns" -duration "$dur")
    bench -nodes 3 "${pat[@]}" -workload register -c 1,256
    bench -nodes 3 "${pat[@]}" -workload where -c 256
    bench "${pat[@]}" -workload echo -c 256
    bench "${pat[@]}" -workload echo -c 256 -echo-procs 3
    bench -nodes 3 "${pat[@]}" -workload where-paced -c 256 -rate "$PACED_RATE"
    bench "${pat[@]}" -workload echo-paced -rate "$PACED_RATE"
    bench "${pat[@]}" -workload echo-paced -rate "$PACED_RATE" -echo-procs 3
  done
fi
stop_cluster

if [ -n "$anchor" ]; then
  echo "== anchor: three-member etcd, fsync on, one lease per agent"
  start_etcd
  echo "   $(etcd --version | head -1), members $etcd_endpoints, pids ${etcd_pids[*]}"
  ebench() {
    "$work/etcdbench" -endpoints "$etcd_endpoints" -pids "$(IFS=,; echo "${etcd_pids[*]}")" \
      -run "$run" -out "$out" -duration "$dur" "$@" >/dev/null
  }
  ebench -workload register -c 1,256
  ebench -workload where -c 256 -consistency serializable,linearizable
  stop_etcd
fi

table=$("$work/wsbench" table -in "$out" -run "$run")
echo "$table"
if has patterns || has voters || has openloop || has floor || [ -n "$anchor" ]; then
  echo
  echo "== ratios within this run (us/etcd; where/echo floor of the same shape; voters: medians against 3 voters)"
  "$work/wsbench" ratios -in "$out" -run "$run"
fi
if $short; then
  n=$(grep -c "\"run\":\"$run\"" "$out")
  echo "short run: $n result lines"
  if has matrix; then
    [ "$n" -ge 16 ] || { echo "expected at least 16 result lines" >&2; exit 1; }
  fi
  exit 0
fi
if $only || [ -n "$out_arg" ]; then
  echo "results appended to $out (run $run; load average before: $load_before); BENCHMARKS.md left alone"
  exit 0
fi

echo "== fsm restore/snapshot micro-benchmarks"
fsm=$(go test -run '^$' -bench 'Restore100k|Snapshot100k|MemoryPerRegistration' -benchtime 3x -benchmem ./fsm/ 2>&1 | grep -E '^(Benchmark|ok|FAIL)' || true)
echo "$fsm"
echo "== proxy in one process: direct call vs Node.Fetch vs POST /v1/fetch"
fetch=$(go test -run '^$' -bench Fetch -benchtime 2s ./registry/ 2>&1 | grep -E '^(Benchmark|ok|FAIL)' || true)
echo "$fetch"

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
{
  echo "<!-- results:begin (generated by scripts/bench.sh; edits here are overwritten) -->"
  echo "Run \`$run\`: \`scripts/bench.sh\` on $(nproc) cores ($cpu), $(go version | cut -d' ' -f3),"
  echo "$(uname -sr), load average before the run: $load_before (the machine is shared)."
  echo "Raw lines: \`$out\`."
  echo
  echo "$table"
  echo
  echo "fsm micro-benchmarks (\`go test -run '^\$' -bench 'Restore100k|Snapshot100k|MemoryPerRegistration' -benchtime 3x -benchmem ./fsm/\`):"
  echo
  echo '```'
  echo "$fsm"
  echo '```'
  echo
  echo "Proxy overhead in one process (\`go test -run '^\$' -bench Fetch -benchtime 2s ./registry/\`; p50/p99 per call):"
  echo
  echo '```'
  echo "$fetch"
  echo '```'
  echo "<!-- results:end -->"
} >"$work/section.md"
if grep -q '<!-- results:begin' BENCHMARKS.md 2>/dev/null; then
  awk -v f="$work/section.md" '
    /<!-- results:begin/ { while ((getline l < f) > 0) print l; skip = 1; next }
    /<!-- results:end -->/ { skip = 0; next }
    !skip { print }' BENCHMARKS.md >"$work/B.md"
  cp "$work/B.md" BENCHMARKS.md
else
  { echo "# Benchmarks"; echo; cat "$work/section.md"; } >BENCHMARKS.md
fi
echo "BENCHMARKS.md updated; results appended to $out"
