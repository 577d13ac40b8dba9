#!/usr/bin/env bash
# The whole test suite: formatting, vet, then every Go test with the race detector.
# CI=true (set by .ci/run): install what the suites need and skip nothing.
# Locally a suite whose tool is missing is skipped, and says so loudly.
set -euo pipefail
cd "$(dirname "$0")/.."

CI="${CI:-false}"
export WSREGISTRY_TEST_ARTIFACTS="${WSREGISTRY_TEST_ARTIFACTS:-$PWD/test-artifacts}"
mkdir -p "$WSREGISTRY_TEST_ARTIFACTS"

say() { printf '\n== %s\n' "$*"; }

# need_tool TOOL DEBIAN_PACKAGE: on CI install the package when the tool is missing and
# fail if that does not work; locally report it and export WSREGISTRY_SKIP_<TOOL>=1.
need_tool() {
  local tool="$1" pkg="$2"
  if command -v "$tool" >/dev/null 2>&1; then return 0; fi
  if [ "$CI" = "true" ]; then
    say "installing $pkg for $tool"
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
    command -v "$tool" >/dev/null 2>&1 || { echo "FATAL: $tool still missing after installing $pkg" >&2; exit 1; }
  else
    echo "!!!!!! SKIPPING the suites that need '$tool' (apt-get install $pkg to run them) !!!!!!" >&2
    export "WSREGISTRY_SKIP_$(echo "$tool" | tr 'a-z-' 'A-Z_')=1"
  fi
}

say "go version"
go version

say "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go'; git ls-files --others --exclude-standard '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt would change:"; echo "$unformatted"; exit 1; fi

say "go vet"
go vet ./...

say "go test -race"
# -count=1: never trust a cached pass for tests that start real processes and sockets.
go test -race -count=1 -timeout 15m ./... 2>&1 | tee "$WSREGISTRY_TEST_ARTIFACTS/go-test.log"

say "all suites passed"
