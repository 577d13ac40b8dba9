#!/usr/bin/env bash
# Create the secrets of the compose cluster: .env next to docker-compose.yml (mode 600) with
#   WSREGISTRY_CLUSTER_KEY  authenticates the nodes to each other on the peer port (8429)
#   WSREGISTRY_ADMIN_TOKEN  admin calls (join, leave, remove, snapshot) and fetch over HTTP;
#                           `wsregistry <command>` run in the same directory reads it from .env
# each 32 random bytes in hex, from /dev/urandom.
#   scripts/compose-env.sh [FILE]     FILE: another env file (the compose test's own)
# An existing file is never overwritten: only a missing one of the two lines is added.
# Says what it did; never prints a secret. scripts/image.sh runs it when .env is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
file="${1:-$PWD/.env}"
keys=(WSREGISTRY_CLUSTER_KEY WSREGISTRY_ADMIN_TOKEN)

say() { printf 'compose-env.sh: %s\n' "$*"; }

# 32 bytes as 64 hex digits (-v: od would print a repeated line as '*').
random_hex() {
  local h
  h=$(od -An -v -tx1 -N32 /dev/urandom | tr -d ' \n')
  [ "${#h}" -eq 64 ] || { echo "compose-env.sh: could not read 32 bytes from /dev/urandom" >&2; return 1; }
  printf '%s' "$h"
}

comment_of() {
  case "$1" in
  WSREGISTRY_CLUSTER_KEY) echo "# Nodes authenticate each other with it (a comma-separated list rotates keys: the first is sent, any is accepted)." ;;
  WSREGISTRY_ADMIN_TOKEN) echo "# Bearer token for admin calls and fetch; wsregistry client commands run in this directory read it from here." ;;
  esac
}

# has KEY: the file assigns KEY (compose's syntax: optional "export ", blanks around '=').
has() { grep -Eq "^[[:space:]]*(export[[:space:]]+)?$1[[:space:]]*=" "$file"; }
# empty KEY: its last assignment has no value, so compose would refuse to start.
empty() {
  grep -E "^[[:space:]]*(export[[:space:]]+)?$1[[:space:]]*=" "$file" | tail -1 |
    grep -Eq "^[^=]*=[[:space:]]*(\"\"|''|)[[:space:]]*(#.*)?$"
}

if [ ! -e "$file" ]; then
  # noclobber: the file is created only if it still does not exist (O_EXCL), never replaced.
  if ! (
    umask 077
    set -o noclobber
    {
      echo "# Secrets of the wsregistry compose cluster, made by scripts/compose-env.sh on $(date -u +%Y-%m-%d)."
      echo "# Keep this file private (mode 600) and out of git (.gitignore lists it). Running nodes keep the"
      echo "# values they started with: after a change, docker compose up -d recreates them."
      for k in "${keys[@]}"; do
        comment_of "$k"
        echo "$k=$(random_hex)"
      done
    } >"$file"
  ); then
    echo "compose-env.sh: could not create $file" >&2
    exit 1
  fi
  chmod 600 "$file"
  say "created $file (mode 600) with a random ${keys[0]} and ${keys[1]}"
  exit 0
fi

[ -f "$file" ] && [ -r "$file" ] && [ -w "$file" ] || { echo "compose-env.sh: $file exists but is not a readable and writable file" >&2; exit 1; }
added=() blank=()
for k in "${keys[@]}"; do
  if has "$k"; then
    if empty "$k"; then blank+=("$k"); fi
    continue
  fi
  # The file may not end with a newline: never glue the new line onto the last one.
  if [ -s "$file" ] && [ "$(tail -c1 "$file" | od -An -c | tr -d ' ')" != '\n' ]; then echo >>"$file"; fi
  { comment_of "$k"; echo "$k=$(random_hex)"; } >>"$file"
  added+=("$k")
done
if [ "${#added[@]}" -gt 0 ]; then
  say "added a random ${added[*]} to the existing $file (nothing else changed)"
  say "nodes already running keep their old settings: docker compose up -d recreates them"
else
  say "$file already sets ${keys[0]} and ${keys[1]}; left it unchanged"
fi
if [ -n "$(find "$file" -perm /044 2>/dev/null)" ]; then
  say "WARNING: $file is readable by other users; chmod 600 $file"
fi
if [ "${#blank[@]}" -gt 0 ]; then
  echo "compose-env.sh: ${blank[*]} is empty in $file, and compose refuses to start without it:" \
    "give it a value, or delete that line and run scripts/compose-env.sh again" >&2
  exit 1
fi
