#!/usr/bin/env bash
# Runs Herald's whole test suite: formatting, lints, unit, conformance, integration and
# crash tests, and real non-Rust clients (Python) against the binary. Installs what the
# tests need (nats-server, PostgreSQL binaries, Python) from Debian's packages when
# missing (and Chromium with its driver for the console's browser tests); the tests
# start their own instances on ephemeral ports.
#
#   ./scripts/test.sh            everything
#   ./scripts/test.sh --no-lint  skip cargo fmt / clippy
set -euo pipefail
cd "$(dirname "$0")/.."

lint=1
for arg in "$@"; do
  case "$arg" in
    --no-lint) lint=0 ;;
    *) echo "usage: $0 [--no-lint]" >&2; exit 2 ;;
  esac
done

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
# The console's browser tests (tests/python/test_console.py): headless Chromium.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]} (Debian packages)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ "$lint" = 1 ]; then
  echo "== cargo fmt --check"
  cargo fmt --all -- --check
  echo "== cargo clippy"
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
echo "== doc tests"
cargo test --workspace --locked --doc

# Real non-Rust clients (the CloudEvents SDK, ...) against the real binary.
echo "== python client tests"
cargo build --locked -p herald
venv=target/pyenv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" 2>/dev/null || {
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  }
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
HERALD_BIN="$PWD/target/debug/herald" "$venv/bin/python" -m pytest -q tests/python
