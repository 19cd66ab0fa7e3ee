#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what the tests need, then runs
# formatting, lints and every test (unit tests and the integration tests that drive the real
# binary with ffmpeg, ezstream and liquidsoap). CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: real peers for the tests and benchmarks, and the build tools. The one list,
# with the reason for each package, is .config/debian-packages (./tidecast reads it too).
echo "== Debian packages"
.config/install-packages all

# Rust pieces: the WebAssembly target for plugins, formatter and linter.
rustup target add wasm32-wasip2 >/dev/null
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# wasmtime and friends are heavy to build: reuse a target directory outside the clone.
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  export CARGO_TARGET_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/tidecast/target"
fi
mkdir -p "$CARGO_TARGET_DIR"

echo "== cargo fmt --check"
cargo fmt --all -- --check
(cd plugins && cargo fmt --all -- --check)
(cd tests/fuzz && cargo fmt --all -- --check)
# The plugin SDK and examples: native unit tests, then every plugin and hostile fixture built for
# wasm32-wasip2 into plugins/dist (the plugin integration tests push those files).
echo "== plugins"
plugins/build.sh --test
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# Every fuzz target, briefly (benches/fuzz.sh runs them for 10 minutes each): a crash, an
# allocation past the limits or a hang fails the run.
echo "== fuzz (${TIDECAST_FUZZ_SECONDS:-15} s per target)"
tests/fuzz/run.sh "${TIDECAST_FUZZ_SECONDS:-15}"
echo "== tests"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
