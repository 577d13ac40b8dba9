#!/usr/bin/env bash
# End-to-end test of docker-compose.yml on the local Docker engine (no registry pulls: the
# image is built FROM scratch by scripts/image.sh). The scenario of issue 6:
#   up -> one leader -> a demo agent (Go SDK) registers through the alias "registry" ->
#   `where` answers on all three nodes -> docker kill the leader -> a new leader, the agent
#   is found again -> the killed node is started and rejoins -> `compose restart` of the
#   agent's node -> it rejoins, the agent reconnects through the alias -> docker network
#   disconnect of one node -> it fences itself (/readyz 503, fenced:true) while the other two
#   serve -> reconnect -> it recovers -> every member shows this build's version -> drain of
#   the agent's node: it moves to another node and `where` never misses meanwhile -> 30
#   agents, a rolling restart of node1..node3 (drain, restart, healthy), then every node
#   holds its fair share within 10 % and `where` never missed meanwhile (issue 16).
# With credentials on, as docker-compose.yml requires them: the project gets its own env file
# from scripts/compose-env.sh (the user's .env is neither read nor created), admin calls from
# the host carry its admin token (read from .env in the working directory, as the README
# says), and the test checks that compose refuses to start without the secrets, that the
# nodes authenticate peers with the cluster key (a container with a wrong key cannot join)
# and that an admin call without the token is refused while reads stay open.
# The project is always removed with `down -v`, failure or not.
# Environment:
#   WSREGISTRY_COMPOSE_TEST_BIND  host address the nodes' ports are published on (127.0.0.1)
#   WSREGISTRY_COMPOSE_TEST_PORT  first host port (18427): node i gets PORT+10i (agents)
#                                 and PORT+10i+1 (HTTP), so the defaults 8427.. stay free
#   WSREGISTRY_TEST_SCALE         multiplies every deadline (slow machines)
#   WSREGISTRY_TEST_ARTIFACTS     where the logs of a failed run are saved
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
started=$(date +%s)

# The host environment must not leak into the client calls or the compose file: only the
# variables below decide how the cluster runs.
while read -r v; do
  case "$v" in
  WSREGISTRY_COMPOSE_TEST_* | WSREGISTRY_TEST_*) ;;
  WSREGISTRY_*) unset "$v" ;;
  esac
done < <(compgen -e)

bind="${WSREGISTRY_COMPOSE_TEST_BIND:-127.0.0.1}"
port0="${WSREGISTRY_COMPOSE_TEST_PORT:-18427}"
scale="${WSREGISTRY_TEST_SCALE:-1}"
project="wsregistry-ct-$$"
tag="composetest-$$"
nodes=(node1 node2 node3)
tmp=$(mktemp -d /tmp/wsregistry-compose-test.XXXXXX)
bin="$tmp/wsregistry"
# The project's secrets: compose reads them with --env-file, the CLI from $tmp/.env when it
# runs in $tmp (api below), as it reads ./.env next to docker-compose.yml.
envfile="$tmp/.env"
rogue="$project-rogue"

# A short rebalancing pause: the rolling restart at the end waits for the nodes to even out.
export WSREGISTRY_TAG="$tag" WSREGISTRY_BIND="$bind" WSREGISTRY_NODE_GRACE=4s WSREGISTRY_REBALANCE_SETTLE=2s
declare -A http ws cid
for i in 0 1 2; do
  n=${nodes[$i]}
  ws[$n]=$((port0 + 10 * i))
  http[$n]=$((port0 + 10 * i + 1))
  export "WSREGISTRY_NODE$((i + 1))_WS_PORT=${ws[$n]}" "WSREGISTRY_NODE$((i + 1))_HTTP_PORT=${http[$n]}"
done

log() { printf '[compose-test %3ss] %s\n' "$(($(date +%s) - started))" "$*"; }
fail() {
  printf '\nFAIL compose-test: %s\n' "$*" >&2
  exit 1
}

# Compose v2 (`docker compose`) when the engine has the plugin, else Compose v1.
if docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
else
  fail "neither 'docker compose' nor 'docker-compose' is installed"
fi
compose() { "${compose_cmd[@]}" --env-file "$envfile" -p "$project" -f "$root/docker-compose.yml" --profile demo "$@"; }
network="${project}_default"

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [ "$rc" -ne 0 ] && [ -n "${compose_cmd[*]:-}" ]; then
    local out="${WSREGISTRY_TEST_ARTIFACTS:-$tmp}/compose-test-$project.log"
    mkdir -p "$(dirname "$out")"
    { compose ps; compose logs --no-color --timestamps; } >"$out" 2>&1
    echo "--- compose ps and the last log lines (all logs: $out)" >&2
    compose ps >&2
    compose logs --no-color --tail 25 >&2 2>&1
  fi
  # A reader loop still running (a step failed while it asked): stop it by its PID.
  for pid in "${reader:-}" "${rb_reader:-}"; do
    [ -z "$pid" ] || kill "$pid" 2>/dev/null
  done
  docker rm -f -v "$rogue" >/dev/null 2>&1
  log "down -v"
  compose down -v --remove-orphans -t 5 >/dev/null 2>&1 || echo "WARNING: compose down failed for project $project" >&2
  docker image rm "wsregistry:$tag" >/dev/null 2>&1
  # A failed run without an artifacts directory keeps its log in $tmp.
  if [ "$rc" -eq 0 ] || [ -n "${WSREGISTRY_TEST_ARTIFACTS:-}" ]; then rm -rf "$tmp"; else rm -f "$bin"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for SECONDS WHAT CMD...: run CMD until it succeeds; fail naming WHAT and CMD's last
# output when it has not within the (scaled) deadline.
wait_for() {
  local secs=$(($1 * scale)) what=$2
  shift 2
  local deadline=$(($(date +%s) + secs)) out
  while :; do
    if out=$("$@" 2>&1); then
      log "ok: $what"
      return 0
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      fail "$what: not true after ${secs}s; last check said: $out"
    fi
    sleep 0.5
  done
}

# Client calls through the published HTTP port of a node, run in $tmp so the CLI takes the
# admin token from $tmp/.env (the path the README gives); or inside its container (the only
# way to reach a node cut off from the network; the container has the token in its env).
api() {
  local n=$1
  shift
  (cd "$tmp" && "$bin" "$@" --addr "$bind:${http[$n]}" --timeout 3s)
}
# api_no_token: the same call sending no token (an empty variable: the CLI skips .env).
api_no_token() {
  local n=$1
  shift
  WSREGISTRY_ADMIN_TOKEN= "$bin" "$@" --addr "$bind:${http[$n]}" --timeout 3s
}
inside() {
  local n=$1
  shift
  docker exec "${cid[$n]}" /wsregistry "$@" --addr 127.0.0.1:8428 --timeout 3s
}
json_field() { sed -n "s/^  \"$1\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p"; } # top-level field of pretty JSON

# cluster_ok NODE...: every NODE is ready, they all name the same leader, the leader is one
# of them, and each has all three nodes as voters in its configuration.
cluster_ok() {
  local leader="" n m l voters
  for n in "$@"; do
    api "$n" healthcheck >/dev/null || { echo "$n not ready: $(api "$n" healthcheck 2>&1)"; return 1; }
    m=$(api "$n" members --json) || return 1
    l=$(json_field leader <<<"$m")
    [ -n "$l" ] || { echo "$n knows no leader"; return 1; }
    [ -z "$leader" ] || [ "$l" = "$leader" ] || { echo "leaders differ: $leader vs $l (by $n)"; return 1; }
    leader=$l
    voters=$(grep -c '"suffrage": "Voter"' <<<"$m" || true)
    [ "$voters" -eq 3 ] || { echo "$n sees $voters voters, want 3"; return 1; }
  done
  [[ " $* " == *" $leader "* ]] || { echo "leader $leader is not one of $*"; return 1; }
  echo "$leader"
}
leader_of() { cluster_ok "$@" | tail -1; }

where_ok() {
  local n got
  for n in "$@"; do
    got=$(api "$n" where demo) || { echo "$n: $got"; return 1; }
    [ "$got" = "$agent" ] || { echo "$n: where demo = $got, want $agent"; return 1; }
  done
}

# registration NODE: "<node>|<session>" of the agent's registration as NODE sees it.
registration() {
  api "$1" list --json | awk -v want="$agent" '
    /"host":/ { gsub(/[",]/, "", $2); host = $2 }
    /"node":/ { gsub(/[",]/, "", $2); node = $2 }
    /"session":/ { gsub(/[",]/, "", $2); if (host == want) { print node "|" $2; found = 1 } }
    END { exit !found }'
}
# registered_elsewhere NODE GONE OLD_SESSION...: NODE sees exactly one registration of the
# agent, held by a live node other than GONE and with none of the old sessions.
registered_elsewhere() {
  local n=$1 gone=$2 r
  shift 2
  r=$(registration "$n") || { echo "$n: agent not registered"; return 1; }
  [ "$(wc -l <<<"$r")" -eq 1 ] || { echo "$n: several registrations: $r"; return 1; }
  [ "${r%%|*}" != "$gone" ] || { echo "$n: still registered on $gone ($r)"; return 1; }
  # Held by the cluster for an agent that still answered when its node went silent
  # (adopted, fsm.ClusterOwner): not registered again through a live node yet.
  [ "${r%%|*}" != "@cluster" ] || { echo "$n: adopted by the cluster, not registered again yet ($r)"; return 1; }
  for s in "$@"; do [ "${r#*|}" != "$s" ] || { echo "$n: still the old session $s"; return 1; }; done
  echo "$r"
}

fenced() {
  local m
  m=$(inside "$1" members --json 2>&1) || { echo "$m"; return 1; }
  [ "$(json_field fenced <<<"$m")" = true ] || { echo "$1 is not fenced: $m"; return 1; }
  # /readyz must say 503 too (the healthcheck exits non-zero with the status).
  if out=$(inside "$1" healthcheck 2>&1); then echo "$1 still ready: $out"; return 1; fi
  grep -q 503 <<<"$out" || { echo "$1 healthcheck failed without a 503: $out"; return 1; }
}
unfenced() {
  local m
  m=$(api "$1" members --json) || return 1
  [ "$(json_field fenced <<<"$m")" = false ] || { echo "$1 still fenced"; return 1; }
}
# peers_by_key NODE...: every NODE authenticates its peers with the cluster key.
peers_by_key() {
  local n s
  for n in "$@"; do
    s=$(api "$n" members --json | json_field peer_security) || return 1
    [ "$s" = cluster-key ] || { echo "$n: peer_security \"$s\", want cluster-key"; return 1; }
  done
}
# rogue_refused: node1 refused the container with a wrong key, which is not a member.
rogue_refused() {
  docker logs "${cid[node1]}" 2>&1 | grep -q 'wrong cluster key' || { echo "node1 logged no refusal: $(docker logs --tail 3 "$rogue" 2>&1)"; return 1; }
  ! api node1 members --json | grep -q '"rogue"' || { echo "rogue is a member"; return 1; }
}
ip_of() { docker inspect -f "{{with index .NetworkSettings.Networks \"$network\"}}{{.IPAddress}}{{end}}" "$1"; }
running() { [ "$(docker inspect -f '{{.State.Running}}' "$1")" = true ] || { echo "not running"; return 1; }; }

log "using ${compose_cmd[*]}; project $project; ports on $bind from $port0"

# --- secrets: compose-env.sh creates them once, then never overwrites ---
scripts/compose-env.sh "$envfile" | sed 's/^/  /'
[ "$(stat -c %a "$envfile")" = 600 ] || fail "compose-env.sh made $envfile mode $(stat -c %a "$envfile"), want 600"
for k in WSREGISTRY_CLUSTER_KEY WSREGISTRY_ADMIN_TOKEN; do
  grep -Eq "^$k=[0-9a-f]{64}\$" "$envfile" || fail "compose-env.sh wrote no 64-hex-digit $k"
done
cp "$envfile" "$tmp/env.before"
scripts/compose-env.sh "$envfile" >/dev/null
cmp -s "$envfile" "$tmp/env.before" || fail "compose-env.sh changed an existing env file"
log "ok: compose-env.sh wrote both secrets (mode 600) and leaves an existing file alone"
: >"$tmp/empty.env"
if out=$("${compose_cmd[@]}" --env-file "$tmp/empty.env" -p "$project" -f "$root/docker-compose.yml" config 2>&1); then
  fail "compose accepts docker-compose.yml without the secrets"
fi
grep -q 'run scripts/compose-env.sh' <<<"$out" || fail "compose without the secrets does not say to run scripts/compose-env.sh: $out"
log "ok: compose refuses to start without the secrets and names scripts/compose-env.sh"

WSREGISTRY_SKIP_COMPOSE_ENV=1 WSREGISTRY_BINARY_OUT="$bin" scripts/image.sh "$tag" >/dev/null || fail "scripts/image.sh could not build the image"
log "image wsregistry:$tag built"

# --- up: three nodes, one leader ---
compose up -d node1 node2 node3 2>&1 | sed 's/^/  /'
for n in "${nodes[@]}"; do cid[$n]=$(compose ps -q "$n"); done
wait_for 90 "three nodes formed one cluster with a leader" cluster_ok "${nodes[@]}"
leader=$(leader_of "${nodes[@]}")
log "leader: $leader"

# --- credentials are on: peers by key, admin by token, reads open ---
wait_for 5 "every node authenticates its peers with the cluster key" peers_by_key "${nodes[@]}"
out=$(api_no_token node1 remove ghost 2>&1) && fail "remove without a token succeeded: $out"
grep -q 401 <<<"$out" || fail "remove from the host without a token: want 401, got: $out"
log "ok: an admin call from the host without the token is refused (401)"
out=$(api node1 remove ghost 2>&1) && fail "remove of an unknown node succeeded: $out"
grep -q 'no member with id ghost' <<<"$out" || fail "remove with the token from .env was not authorized: $out"
log "ok: the same call with the admin token from .env is authorized"
api_no_token node2 members >/dev/null || fail "members without a token: $(api_no_token node2 members 2>&1)"
log "ok: reads need no token"
docker run -d --name "$rogue" --network "$network" --env WSREGISTRY_CLUSTER_KEY=not-the-key \
  "wsregistry:$tag" serve --node-id rogue --advertise "$rogue" --bootstrap-expect 3 --join node1:8429 >/dev/null
wait_for 30 "node1 refused a container with a wrong cluster key" rogue_refused
docker rm -f -v "$rogue" >/dev/null
wait_for 10 "still one cluster of three" cluster_ok "${nodes[@]}"

# --- a demo agent registers through the alias ---
compose up -d agent-demo 2>&1 | sed 's/^/  /'
agent_cid=$(compose ps -q agent-demo)
agent="$(ip_of "$agent_cid"):9000"
wait_for 60 "agent $agent registered through registry:8427; where demo answers on all three" where_ok "${nodes[@]}"
reg=$(registration node1)
log "agent registered on ${reg%%|*} (session ${reg#*|})"

# The kill below should cut the agent's own connection: restart the agent until the alias
# lands it on the leader (each try picks one of three; a miss only weakens this step, the
# restart step below always moves the agent).
for try in 1 2 3 4 5 6 7 8 9 10; do
  [ "${reg%%|*}" != "$leader" ] || break
  docker restart -t 5 "$agent_cid" >/dev/null
  wait_for 30 "agent re-registered after its restart (try $try)" registered_elsewhere node1 none "${reg#*|}" >/dev/null
  reg=$(registration node1)
done
if [ "${reg%%|*}" = "$leader" ]; then
  log "agent is on the leader $leader (session ${reg#*|})"
else
  log "WARNING: the agent did not land on the leader in 10 tries; the kill does not cut its connection this run"
fi

# --- docker kill the leader ---
survivors=()
for n in "${nodes[@]}"; do [ "$n" = "$leader" ] || survivors+=("$n"); done
log "docker kill $leader (the leader)"
docker kill "${cid[$leader]}" >/dev/null
wait_for 60 "a new leader among ${survivors[*]}" cluster_ok "${survivors[@]}"
new_leader=$(leader_of "${survivors[@]}")
[ "$new_leader" != "$leader" ] || fail "the killed node $leader is still named leader"
log "new leader: $new_leader"
old_sessions=()
[ "${reg%%|*}" = "$leader" ] && old_sessions+=("${reg#*|}")
wait_for 60 "agent found again, registered on a live node" registered_elsewhere "${survivors[0]}" "$leader" "${old_sessions[@]}"
wait_for 30 "where demo answers on ${survivors[*]}" where_ok "${survivors[@]}"
reg=$(registration "${survivors[0]}")
log "agent now on ${reg%%|*} (session ${reg#*|})"

# A killed container stays down (docker kill counts as a manual stop): start it again.
compose start "$leader" 2>&1 | sed 's/^/  /'
wait_for 90 "killed node $leader rejoined (ready, same leader, 3 voters)" cluster_ok "${nodes[@]}"
wait_for 30 "where demo answers on all three" where_ok "${nodes[@]}"

# --- compose restart of the agent's node: it rejoins, the agent reconnects via the alias ---
reg=$(registration node1)
target=${reg%%|*}
log "compose restart $target (the agent's node)"
compose restart -t 20 "$target" 2>&1 | sed 's/^/  /'
wait_for 90 "restarted node $target rejoined (ready, same leader, 3 voters)" cluster_ok "${nodes[@]}"
wait_for 60 "agent reconnected through the alias (new session)" registered_elsewhere "$target" none "${reg#*|}"
wait_for 30 "where demo answers on all three" where_ok "${nodes[@]}"
reg=$(registration node1)
log "agent now on ${reg%%|*} (session ${reg#*|})"

# --- docker network disconnect: the node fences itself, the other two serve ---
leader=$(leader_of "${nodes[@]}")
target=""
for n in "$leader" "${nodes[@]}"; do
  # Not the agent's node: a connection into a cut-off node only dies by ping timeout.
  if [ "$n" != "${reg%%|*}" ]; then target=$n && break; fi
done
others=()
for n in "${nodes[@]}"; do [ "$n" = "$target" ] || others+=("$n"); done
ip_before=$(ip_of "${cid[$target]}")
log "docker network disconnect $target ($ip_before; leader is $leader)"
docker network disconnect "$network" "${cid[$target]}"
wait_for 60 "$target fenced itself (fenced:true, /readyz 503)" fenced "$target"
wait_for 60 "${others[*]} keep serving with a leader" cluster_ok "${others[@]}"
wait_for 30 "where demo answers on ${others[*]}" where_ok "${others[@]}"
running "${cid[$target]}" >/dev/null || fail "$target stopped instead of fencing itself"

# --- reconnect: it recovers ---
log "docker network connect $target"
docker network connect --alias registry --alias "$target" "$network" "${cid[$target]}"
ip_after=$(ip_of "${cid[$target]}")
# The node advertised its address at start; Docker hands the freed address back (lowest
# free first), and the scenario depends on it.
[ "$ip_after" = "$ip_before" ] || fail "Docker gave $target a new address on reconnect ($ip_before -> $ip_after)"
wait_for 60 "$target recovered (not fenced)" unfenced "$target"
wait_for 60 "all three ready with one leader" cluster_ok "${nodes[@]}"
wait_for 30 "where demo answers on all three" where_ok "${nodes[@]}"

# --- versions: every member announces its build (issue 16) ---
ver=$("$bin" version --json | sed -n 's/.*"version":"\([^"]*\)".*/\1/p')
versions_ok() {
  local m c
  m=$(api node1 members --json) || return 1
  # The node's own version, and each of the three members'.
  c=$(grep -c "\"version\": \"$ver\"" <<<"$m" || true)
  [ "$c" -eq 4 ] || { echo "version $ver shown $c times, want 4: $m"; return 1; }
}
wait_for 30 "every member announces version $ver" versions_ok

# --- drain the agent's node while every node is asked for the agent: never a miss ---
reg=$(registration node1)
target=${reg%%|*}
others=()
for n in "${nodes[@]}"; do [ "$n" = "$target" ] || others+=("$n"); done
log "drain $target (the agent's node), asking all three for the agent meanwhile"
rm -f "$tmp/drain-done"
(
  misses=0
  while [ ! -e "$tmp/drain-done" ]; do
    where_ok "${nodes[@]}" >/dev/null || misses=$((misses + 1))
    sleep 0.2
  done
  echo "$misses" >"$tmp/drain-misses"
) &
reader=$!
drained=0
api "$target" drain --wait $((30 * scale))s 2>&1 | sed 's/^/  /' || drained=1
touch "$tmp/drain-done"
wait "$reader"
reader=""
[ "$drained" -eq 0 ] || fail "$target did not drain"
[ "$(cat "$tmp/drain-misses")" = 0 ] || fail "where demo missed $(cat "$tmp/drain-misses") times during the drain"
wait_for 30 "agent registered again on another node" registered_elsewhere "${others[0]}" "$target" "${reg#*|}"
if api "$target" healthcheck >/dev/null 2>&1; then fail "$target is ready while drained"; fi
api "$target" drain --cancel | sed 's/^/  /'
wait_for 30 "$target ready again after the drain" cluster_ok "${nodes[@]}"

# --- rebalance after a rolling restart (issue 16) ---
# 30 agents through the alias: the demo agent and 29 more agent-demo processes in its
# container, each on its own port (so its own address) with its own namespace. Then
# node1..node3 in turn: drained (as the StatefulSet's preStop does; compose has no such
# hook, and a plain SIGTERM deregisters its agents until they reconnect), restarted, back
# healthy before the next. Then every node must hold its fair share within 10 % (at least
# one agent: 9-11 of 30) while a reader asks the nodes that serve for a sample of the
# namespaces throughout: never a miss.
rb_agents=30
agent_ip=${agent%:*}
for i in $(seq 1 $((rb_agents - 1))); do
  docker exec -d "$agent_cid" /wsregistry agent-demo --registry registry:8427 --namespace "rb-$i" --listen ":$((9100 + i))"
done
# agent_counts NODE: "node1=N node2=N node3=N": agent sessions per member as NODE sees them.
agent_counts() {
  # members --json sorts each member's keys: "agents" comes before "id".
  api "$1" members --json | awk '
    /"agents": [0-9]/ { gsub(/[",]/, "", $2); a = $2 }
    /"id":/ { gsub(/[",]/, "", $2); if (a != "") { printf "%s%s=%s", sep, $2, a; sep = " " } a = "" }
    END { print "" }'
}
# balanced: every node within max(10 % of the fair share, 1) of it, all agents counted once.
balanced() {
  local c
  c=$(agent_counts node1) || return 1
  awk -v want="$rb_agents" '{
    for (i = 1; i <= NF; i++) { split($i, kv, "="); n[i] = kv[2]; total += kv[2] }
    fair = want / NF; band = fair / 10; if (band < 1) band = 1
    ok = total == want
    for (i = 1; i <= NF; i++) if (n[i] < fair - band || n[i] > fair + band) ok = 0
    print $0 (ok ? "" : " (fair share " fair " +-" band ", " total " counted)")
    exit !ok }' <<<"$c"
}
all_registered() {
  local c
  c=$(agent_counts node1) || return 1
  awk -v want="$rb_agents" '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); t += kv[2] } print $0; exit t != want }' <<<"$c"
}
wait_for 60 "$rb_agents agents registered through the alias" all_registered
log "agents per node: $(agent_counts node1)"

# The reader: the sampled namespaces on every node listed in $tmp/rb-serving, all the time.
# A miss is a node answering 404 (no live instance) or another address; a node that does
# not answer at all (stopping) is only counted as unavailable.
sample=(demo rb-1 rb-10 rb-20 rb-29)
expect() { if [ "$1" = demo ]; then echo "$agent"; else echo "$agent_ip:$((9100 + ${1#rb-}))"; fi; }
echo "${nodes[*]}" >"$tmp/rb-serving"
rm -f "$tmp/rb-done"
(
  misses=0 unavailable=0 rounds=0 first=""
  while [ ! -e "$tmp/rb-done" ]; do
    for n in $(cat "$tmp/rb-serving"); do
      for ns in "${sample[@]}"; do
        if out=$(api "$n" where "$ns" 2>&1); then
          [ "$out" = "$(expect "$ns")" ] && continue
        elif ! grep -q 'no live instance' <<<"$out"; then
          unavailable=$((unavailable + 1))
          continue
        fi
        misses=$((misses + 1))
        [ -n "$first" ] || first="$n: where $ns = $out at $(($(date +%s) - started))s"
      done
    done
    rounds=$((rounds + 1))
  done
  echo "$misses $unavailable $rounds $first" >"$tmp/rb-reader"
) &
rb_reader=$!

for n in "${nodes[@]}"; do
  log "rolling restart: drain $n (agents per node: $(agent_counts node1))"
  api "$n" drain --wait $((30 * scale))s 2>&1 | tail -1 | sed 's/^/  /' || fail "$n did not drain"
  others=()
  for m in "${nodes[@]}"; do [ "$m" = "$n" ] || others+=("$m"); done
  echo "${others[*]}" >"$tmp/rb-serving"
  compose restart -t 20 "$n" 2>&1 | sed 's/^/  /'
  wait_for 90 "$n restarted and rejoined (ready, same leader, 3 voters)" cluster_ok "${nodes[@]}"
  echo "${nodes[*]}" >"$tmp/rb-serving"
done
last_restart=$(date +%s)
log "all three restarted; agents per node: $(agent_counts node1)"
wait_for 60 "every node holds its fair share of the $rb_agents agents (within 10 %, at least 1)" balanced
rb_balanced=$(($(date +%s) - last_restart))
touch "$tmp/rb-done"
wait "$rb_reader"
rb_reader=""
read -r rb_misses rb_unavailable rb_rounds rb_first <"$tmp/rb-reader"
[ "$rb_misses" -eq 0 ] || fail "where missed $rb_misses times during the rolling restart (first: $rb_first)"
[ "$rb_rounds" -ge 5 ] || fail "the reader ran only $rb_rounds rounds"
log "balanced ${rb_balanced}s after the last restart ($(agent_counts node1)); reader: 0 misses, $rb_unavailable unavailable, $rb_rounds rounds of ${#sample[@]} namespaces"

log "PASS in $(($(date +%s) - started))s"
