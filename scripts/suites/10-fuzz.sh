#!/usr/bin/env bash
# Fuzz every decoder that reads bytes from outside for a few seconds each (the seed corpora in
# <pkg>/testdata/fuzz/<Target>/ already run as plain tests under `go test`).
# WSREGISTRY_FUZZTIME overrides the budget per target (default 30000x: 30,000 inputs, 1-5 s
# each here). A count, not a duration: with a duration, go1.26's fuzz coordinator can report a
# bare "context deadline exceeded" failure when the time runs out mid-input (golang/go#75804,
# fixed in go1.27), which failed CI once with no crasher. A longer local run:
#   WSREGISTRY_FUZZTIME=2000000x bash scripts/suites/10-fuzz.sh
# A failure leaves the crasher in <pkg>/testdata/fuzz/<Target>/: keep it as a regression seed.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh

fuzztime="${WSREGISTRY_FUZZTIME:-30000x}"
targets=(
  "./wsserver FuzzDecodeFrame"
  "./wsserver FuzzDecodeRequest"
  "./wsserver FuzzEncodeResponse"
  "./wsserver FuzzValidJSON"
  "./wsserver FuzzFrameReader"
  "./wsserver FuzzParseRequest"
  "./fsm FuzzDecode"
  "./fsm FuzzRestore"
  "./httpapi FuzzParseProps"
  "./registry FuzzNamespaceArg"
)
failed=()
for t in "${targets[@]}"; do
  read -r pkg name <<<"$t"
  say "fuzz $pkg $name for $fuzztime"
  # One target per invocation: -fuzz accepts a single match. -parallel 2 keeps to the CI's cores.
  if ! go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" -parallel 2 "$pkg"; then
    failed+=("$pkg $name")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz targets failed: ${failed[*]} (crashers are in <pkg>/testdata/fuzz/)" >&2
  exit 1
fi
echo "all ${#targets[@]} fuzz targets passed"
