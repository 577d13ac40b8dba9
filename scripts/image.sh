#!/usr/bin/env bash
# Build the static wsregistry binary and the wsregistry image (FROM scratch, deploy/Dockerfile).
#   scripts/image.sh [EXTRA_TAG...]
# Tags wsregistry:<git describe --always --dirty>, wsregistry:latest and every EXTRA_TAG.
# WSREGISTRY_IMAGE (default wsregistry) is the repository name; WSREGISTRY_BINARY_OUT=PATH
# also keeps a copy of the binary there (the compose test runs it as a client).
# The build context is a staging directory holding only the binary and an empty data/
# directory (no builder image can be pulled here), so nothing else of the tree is sent.
# When .env (the compose cluster's secrets) is missing next to docker-compose.yml, it is
# created by scripts/compose-env.sh, so `docker compose up -d` works next;
# WSREGISTRY_SKIP_COMPOSE_ENV=1 leaves it alone (the compose test brings its own).
set -euo pipefail
cd "$(dirname "$0")/.."

repo="${WSREGISTRY_IMAGE:-wsregistry}"
version=$(git describe --always --dirty 2>/dev/null || echo dev)
ctx=$(mktemp -d /tmp/wsregistry-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT

echo "building the static binary (version $version)"
CGO_ENABLED=0 go build -ldflags "-s -w -X github.com/wsregistry/wsregistry/internal/version.version=$version" -o "$ctx/wsregistry" ./cmd/wsregistry
mkdir "$ctx/data"
if [ -n "${WSREGISTRY_BINARY_OUT:-}" ]; then cp "$ctx/wsregistry" "$WSREGISTRY_BINARY_OUT"; fi

tags=(-t "$repo:$version" -t "$repo:latest")
for t in "$@"; do tags+=(-t "$repo:$t"); done
echo "building image $repo:$version, $repo:latest${*:+ and $*}"
# The legacy builder warns that it is deprecated; buildx is not installed everywhere, and
# a FROM scratch image with two COPYs needs nothing from BuildKit: hide only that warning.
if ! docker build --quiet -f deploy/Dockerfile "${tags[@]}" \
  --label "org.opencontainers.image.version=$version" "$ctx" >"$ctx/build.log" 2>&1; then
  cat "$ctx/build.log" >&2
  echo "image.sh: docker build failed" >&2
  exit 1
fi
grep -v -i -E 'deprecated|buildx|^sha256:|^ *$' "$ctx/build.log" >&2 || true
docker image inspect "$repo:$version" --format "image $repo:$version {{.Id}} {{.Size}} bytes"
if [ ! -e .env ] && [ "${WSREGISTRY_SKIP_COMPOSE_ENV:-}" != 1 ]; then
  scripts/compose-env.sh
fi
