# Shared by scripts/test.sh and scripts/suites/*.sh (sourced, not run).

CI="${CI:-false}"

say() { printf '\n== %s\n' "$*"; }

# need_tool TOOL DEBIAN_PACKAGE: on CI install the package when the tool is missing and
# fail if that does not work; locally say loudly that the suites needing it are skipped
# and return 1 so the caller can skip.
need_tool() {
  local tool="$1" pkg="$2"
  if command -v "$tool" >/dev/null 2>&1; then return 0; fi
  if [ "$CI" = "true" ]; then
    say "installing $pkg for $tool"
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; export APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
    command -v "$tool" >/dev/null 2>&1 || { echo "FATAL: $tool still missing after installing $pkg" >&2; exit 1; }
    return 0
  fi
  echo "!!!!!! SKIPPING what needs '$tool' (apt-get install $pkg to run it) !!!!!!" >&2
  return 1
}
