#!/usr/bin/env bash
# The Kubernetes manifests (deploy/k8s): strict decoding into k8s.io/api types, the
# kustomization listing every file, and three local processes started exactly as the
# StatefulSet starts its pods forming one cluster. deploy/ is a Go module of its own (so the
# main module does not depend on k8s.io/api), which the root `go test ./...` skips.
# The process test needs root and unshare (a private mount namespace per pod for the
# generated /etc/hosts); it skips loudly without them, and fails instead on CI.
set -euo pipefail
cd "$(dirname "$0")/../../deploy"
. ../scripts/lib.sh

if [ "$CI" = "true" ]; then need_tool unshare util-linux; fi
say "go vet (deploy module)"
go vet ./...
say "go test (deploy module)"
log="${WSREGISTRY_TEST_ARTIFACTS:-${TMPDIR:-/tmp}}/k8s-manifests-test.log"
go test -count=1 -timeout 5m -v ./... 2>&1 | tee "$log" # pipefail: go test's status counts
