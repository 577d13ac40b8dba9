#!/usr/bin/env bash
# Memory per idle agent connection on one node at N connections (default 50,000; issue 14
# item 5), in Docker, where a container may hold more descriptors than the host's shell
# (`scripts/bench.sh --only scale` stops at 10,000 under a 20,000 fd limit).
#   scripts/bench-conns.sh [N]
#   NOFILE=20000 scripts/bench-conns.sh 19500     # an engine that cannot go past 20,000 fds
# A benchmark, not part of CI or scripts/test.sh. Needs Go, curl and a local Docker engine;
# nothing is pulled. It builds the static wsregistry and bench/conns (the client) into a
# FROM scratch image of its own, creates a Docker network of its own, and starts on it:
#   - a node: a one-node cluster with --pprof, an admin token (the host reaches it through
#     the Docker gateway, not loopback, so /debug/pprof needs the token), --max-connections
#     and --max-connections-per-ip above N, `--ulimit nofile=NOFILE`, defaults otherwise
#     (NODE_GOMEMLIMIT, e.g. 450MiB, sets its GOMEMLIMIT);
#   - clients: N agent connections with distinct identities (/10.a.b.c/7000), at most
#     CLIENT_CONNS (15,000) per client container, so each fits the default ephemeral port
#     range (~28,000) from its own address and a 20,000 fd limit; they answer pings and
#     stay idle.
# The host reads the node's RSS (VmRSS of its PID in /proc), its Go heap and goroutine
# stacks (HeapAlloc, HeapInuse, StackInuse after a GC: /debug/pprof/heap?debug=1&gc=1) and
# its goroutines with no agents, then at 10,000 (when N is larger) and at N, each twice: 12 s
# after the clients hold them all (past the node's 10 s ping, so every connection has
# answered one; comparable with bench.sh's scale figure) and SETTLE s after (default 150:
# the pings' garbage grows the heap towards the collector's goal between cycles, and what a
# cycle frees stays resident; RSS levels off after about two minutes), with the RSS every
# 10 s in between, and prints the growth per connection. NOFILE (default 200000) is the
# containers' fd limit; an engine that cannot grant it (its own hard limit is lower and it
# lacks CAP_SYS_RESOURCE) is reported before anything starts. Containers, network and image
# are removed by name on exit. 19,500 connections take about 7 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

n="${1:-50000}"
case "$n" in '' | *[!0-9]* | 0) echo "usage: scripts/bench-conns.sh [N]" >&2; exit 2 ;; esac
early=12
settle="${SETTLE:-150}"
nofile="${NOFILE:-200000}"
per_client="${CLIENT_CONNS:-15000}"
steps=("$n")
if [ "$n" -gt 10000 ]; then steps=(10000 "$n"); fi

name="wsregistry-bench-conns-$$"
image="$name:latest"
net="$name"
node="$name-node"
clients=()
for k in $(seq 0 $(((n - 1) / per_client))); do clients+=("$name-client$k"); done
ctx=$(mktemp -d /tmp/wsregistry-bench-conns.XXXXXX)
cleanup() {
  docker rm -f "${clients[@]}" "$node" "$name-probe" >/dev/null 2>&1 || true
  docker network rm "$net" >/dev/null 2>&1 || true
  docker image rm "$image" >/dev/null 2>&1 || true
  rm -rf "$ctx"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== building wsregistry and bench/conns (static), image $image"
CGO_ENABLED=0 go build -ldflags "-s -w" -o "$ctx/wsregistry" ./cmd/wsregistry
CGO_ENABLED=0 go build -ldflags "-s -w" -o "$ctx/conns" ./bench/conns
mkdir "$ctx/data"
printf '%s\n' 'FROM scratch' 'COPY --chown=65532:65532 data /data' 'COPY wsregistry conns /' \
  'USER 65532:65532' 'WORKDIR /data' 'ENTRYPOINT ["/wsregistry"]' >"$ctx/Dockerfile"
docker build --quiet -t "$image" "$ctx" >"$ctx/build.log" 2>&1 || { cat "$ctx/build.log" >&2; exit 1; }

# The node holds one descriptor per connection plus a few dozen of its own.
if [ "$nofile" -lt $((n + 200)) ] || [ "$nofile" -lt $((per_client + 200)) ]; then
  echo "NOFILE=$nofile is too low for $n connections on one node ($per_client per client)" >&2
  exit 1
fi
if ! docker run --rm --name "$name-probe" --ulimit "nofile=$nofile:$nofile" "$image" version >/dev/null 2>"$ctx/probe.log"; then
  cat "$ctx/probe.log" >&2
  echo "this Docker engine cannot give a container $nofile descriptors (its own hard limit is" >&2
  echo "lower and it may not raise it): run where it can, or N below its limit with NOFILE=<limit>" >&2
  exit 1
fi

docker network create "$net" >/dev/null
token=$(head -c 16 /dev/urandom | od -An -v -tx1 | tr -d ' \n')
limit=$((n + 1000))
echo "== node $node: one-node cluster, --max-connections $limit, nofile $nofile${NODE_GOMEMLIMIT:+, GOMEMLIMIT=$NODE_GOMEMLIMIT}"
docker run -d --name "$node" --network "$net" --ulimit "nofile=$nofile:$nofile" \
  -e WSREGISTRY_ADMIN_TOKEN="$token" ${NODE_GOMEMLIMIT:+-e GOMEMLIMIT="$NODE_GOMEMLIMIT"} "$image" \
  serve --node-id node1 --data-dir /data --pprof \
  --max-connections "$limit" --max-connections-per-ip "$limit" >/dev/null
ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$node")
pid=$(docker inspect -f '{{.State.Pid}}' "$node")
api="http://$ip:8428"
for i in $(seq 1 300); do
  curl -fsS -o /dev/null "$api/readyz" 2>/dev/null && break
  if [ "$i" = 300 ]; then docker logs "$node" 2>&1 | tail -20 >&2; echo "node not ready after 30 s" >&2; exit 1; fi
  sleep 0.1
done
[ -r "/proc/$pid/status" ] || { echo "no /proc/$pid on this host: the Docker engine runs elsewhere" >&2; exit 1; }

# memstat LABEL FIELD: a runtime.MemStats field of the heap profile taken at LABEL.
memstat() { awk -v k="$2" '$1 == "#" && $2 == k && $3 == "=" { print $4; exit }' "$ctx/heap-$1"; }
open_conns() { curl -fsS "$api/metrics" | awk '$1 == "wsregistry_agent_connections" { print $2 + 0 }'; }
declare -A rss heap stack inuse kept gor total gcs at
measure() { # measure LABEL: the heap profile after a GC, then RSS
  curl -fsS -H "Authorization: Bearer $token" "$api/debug/pprof/heap?debug=1&gc=1" >"$ctx/heap-$1"
  heap[$1]=$(memstat "$1" HeapAlloc)
  inuse[$1]=$(memstat "$1" HeapInuse)
  # Free spans the runtime keeps resident (not yet returned to the OS).
  kept[$1]=$(($(memstat "$1" HeapIdle) - $(memstat "$1" HeapReleased)))
  stack[$1]=$(memstat "$1" Stack) # "# Stack = StackInuse / StackSys"
  total[$1]=$(memstat "$1" TotalAlloc)
  gcs[$1]=$(memstat "$1" NumGC)
  at[$1]=$SECONDS
  rss[$1]=$(awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$pid/status")
  gor[$1]=$(curl -fsS -H "Authorization: Bearer $token" "$api/debug/pprof/goroutine?debug=1" | awk 'NR == 1 { print $NF }')
}
# wait_step S TOTAL: until every client reports step S; checks that the node holds TOTAL
# connections, measures (label TOTAL-early) after $early s and (label TOTAL) after $settle s.
wait_step() {
  local deadline=$((SECONDS + 900)) c open
  for c in "${clients[@]}"; do
    until docker logs "$c" 2>/dev/null | grep -q "^step $1 holding "; do
      if [ "$(docker inspect -f '{{.State.Running}}' "$c")" != true ] || [ $SECONDS -gt $deadline ]; then
        docker logs "$c" 2>&1 | tail -5 >&2
        echo "$c did not reach step $1" >&2
        exit 1
      fi
      sleep 1
    done
    echo "   $c: $(docker logs "$c" 2>/dev/null | grep "^step $1 holding " | tail -1)"
  done
  sleep "$early"
  open=$(open_conns)
  echo "   node: $open agent connections open"
  [ "$open" = "$2" ] || { echo "expected $2 open connections on the node" >&2; exit 1; }
  measure "$2-early"
  # The node's RSS every 10 s while it settles: pings make garbage, so the heap grows towards
  # the collector's goal between cycles and what it frees stays resident.
  local waited=$early samples="" d
  while [ "$waited" -lt "$settle" ]; do
    d=$((settle - waited < 10 ? settle - waited : 10))
    sleep "$d"
    waited=$((waited + d))
    samples+=" $(awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$pid/status")"
  done
  echo "   node RSS (MiB) every 10 s from ${early} s to ${settle} s:$samples"
  open=$(open_conns)
  [ "$open" = "$2" ] || { echo "expected $2 open connections on the node, found $open" >&2; exit 1; }
  measure "$2"
}

sleep 2
measure 0
echo "== ${#clients[@]} client container(s), up to $per_client connections each, to $node:8427: ${steps[*]}"
for k in "${!clients[@]}"; do
  # Client k's share of each step: the agents from k*per_client on.
  ks=""
  for s in "${steps[@]}"; do
    c=$((s - k * per_client)); c=$((c < 0 ? 0 : c > per_client ? per_client : c))
    ks+="${ks:+,}$c"
  done
  docker run -d --name "${clients[$k]}" --network "$net" --ulimit "nofile=$nofile:$nofile" \
    --entrypoint /conns "$image" -target "$node:8427" -steps "$ks" -first $((k * per_client)) >/dev/null
done
for i in "${!steps[@]}"; do
  wait_step $((i + 1)) "${steps[$i]}"
  docker kill -s USR1 "${clients[@]}" >/dev/null
done
# Once past the last step, SIGUSR1 makes each client print "holding N lost M" again.
sleep 1
docker kill -s USR1 "${clients[@]}" >/dev/null
sleep 1
lost=0
for c in "${clients[@]}"; do
  l=$(docker logs "$c" 2>/dev/null | tail -1 | awk '$1 == "holding" { print $4 }')
  lost=$((lost + ${l:-1}))
done
echo "   clients at the end: $lost connections lost"

echo
echo "== node memory ($(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(go version | cut -d' ' -f3), Docker $(docker version -f '{{.Server.Version}}'), $(git describe --always --dirty 2>/dev/null || echo dev))"
printf '%-13s %8s %9s %9s %8s %9s | %8s %9s %8s %8s\n' connections "RSS MiB" "HeapAlloc" "HeapInuse" "stacks" "idle kept" \
  "RSS/conn" "heap/conn" "stk/conn" "gor/conn"
labels=(0)
for c in "${steps[@]}"; do labels+=("$c-early" "$c"); done
for l in "${labels[@]}"; do
  c=${l%-early}
  if [ "$l" = "$c" ]; then at="$c @${settle}s"; else at="$c @${early}s"; fi
  [ "$c" != 0 ] || at=0
  awk -v at="$at" -v c="$c" -v r="${rss[$l]}" -v h="${heap[$l]}" -v i="${inuse[$l]}" -v s="${stack[$l]}" -v kp="${kept[$l]}" \
    -v g="${gor[$l]}" -v r0="${rss[0]}" -v h0="${heap[0]}" -v s0="${stack[0]}" -v g0="${gor[0]}" 'BEGIN {
      m = 1048576; k = 1024
      if (c == 0) { pr = "-"; ph = "-"; ps = "-"; pg = "-" } else {
        pr = sprintf("%.1f", (r - r0) / c / k); ph = sprintf("%.1f", (h - h0) / c / k); ps = sprintf("%.1f", (s - s0) / c / k)
        pg = sprintf("%.2f", (g - g0) / c)
      }
      printf "%-13s %8.1f %9.1f %9.1f %8.1f %9.1f | %8s %9s %8s %8s\n", at, r / m, h / m, i / m, s / m, kp / m, pr, ph, ps, pg
    }'
done
# What idle connections allocate (pings, timers): the garbage behind the RSS growth while settling.
for c in "${steps[@]}"; do
  d=$((at[$c] - at[$c-early]))
  [ "$d" -ge 30 ] || continue # shorter: the profiles' own allocations dominate
  awk -v c="$c" -v d="$d" -v a="$((total[$c] - total[$c-early]))" -v g="$((gcs[$c] - gcs[$c-early] - 1))" \
    'BEGIN { printf "idle at %d: %.0f B allocated per connection per 10 s (a ping interval) over %d s, %d other collections\n", c, a / c / d * 10, d, g }'
done
if [ "${#steps[@]}" = 2 ]; then
  awk -v r1="${rss[10000]}" -v r2="${rss[$n]}" -v h1="${heap[10000]}" -v h2="${heap[$n]}" -v d=$((n - 10000)) -v n="$n" \
    'BEGIN { printf "from 10000 to %d: %.1f KiB RSS, %.1f KiB heap per added connection\n", n, (r2 - r1) / d / 1024, (h2 - h1) / d / 1024 }'
fi
awk -v a="${rss[$n]}" -v b="${rss[0]}" -v c="$n" -v t="$settle" \
  'BEGIN { x = (a - b) / c / 1024; printf "target <= 24 KiB RSS per idle connection at %d (after %d s): %.1f KiB, %s\n", c, t, x, (x <= 24 ? "met" : "NOT met") }'
[ "$lost" = 0 ] || { echo "the clients lost $lost connections during the run" >&2; exit 1; }
