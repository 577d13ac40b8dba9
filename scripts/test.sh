#!/usr/bin/env bash
# The whole test suite: formatting, vet, every Go test with the race detector, then the
# suites in scripts/suites/ (each a script that needs more than Go: Docker, a browser...).
# CI=true (set by .ci/run): install what the suites need and skip nothing.
# Locally a suite whose tool is missing is skipped, and says so loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

export WSREGISTRY_TEST_ARTIFACTS="${WSREGISTRY_TEST_ARTIFACTS:-$PWD/test-artifacts}"
mkdir -p "$WSREGISTRY_TEST_ARTIFACTS"

# Tools the Go tests drive for real: on CI they are installed, locally their tests skip
# (and say so) when missing.
if need_tool chromium chromium; then :; else export WSREGISTRY_SKIP_BROWSER=1; fi
if need_tool promtool prometheus; then :; else export WSREGISTRY_SKIP_PROMETHEUS=1; fi

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

for suite in scripts/suites/*.sh; do
  [ -e "$suite" ] || continue
  say "suite $(basename "$suite")"
  bash "$suite"
done

say "all suites passed"
