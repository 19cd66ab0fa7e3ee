#!/usr/bin/env bash
# Builds every plugin of this workspace for wasm32-wasip2 and copies the components to
# plugins/dist/NAME.wasm (or $TIDECAST_PLUGIN_DIST). Usage: plugins/build.sh [--test]
#   --test  also runs the examples' native unit tests first.
# Packages are built one at a time: the SDK enables one world per plugin through a cargo feature,
# and building several packages in one cargo call would unify the features.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
export CARGO_TARGET_DIR=${TIDECAST_PLUGIN_TARGET:-${CARGO_TARGET_DIR:-$HOME/.cache/tidecast/target}/plugins}
dist=${TIDECAST_PLUGIN_DIST:-$here/dist}
mkdir -p "$dist"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
packages=$(sed -n '/^members = \[/,/^\]/p' Cargo.toml | grep -o '"[^"]*"' | tr -d '"' | grep -v '^sdk$')
if [ "${1:-}" = "--test" ]; then
  for dir in $packages; do
    case $dir in examples/*) cargo test -q --locked -p "$(basename "$dir")" ;; esac
  done
fi
for dir in $packages; do
  name=$(basename "$dir")
  cargo build -q --locked --release --target wasm32-wasip2 -p "$name"
  file=$CARGO_TARGET_DIR/wasm32-wasip2/release/${name//-/_}.wasm
  [ -f "$file" ] || file=$CARGO_TARGET_DIR/wasm32-wasip2/release/$name.wasm
  # A temporary name per process: test processes may run this script at the same time.
  cp "$file" "$dist/.$name.wasm.$$" && mv "$dist/.$name.wasm.$$" "$dist/$name.wasm"
done
# A second version of the gain example (another default), for the hot-swap test. Its own target
# directory, so the two builds do not invalidate each other.
TIDECAST_GAIN_DEFAULT_DB=-120 CARGO_TARGET_DIR=$CARGO_TARGET_DIR/gain-minus-120 \
  cargo build -q --locked --release --target wasm32-wasip2 -p gain
cp "$CARGO_TARGET_DIR/gain-minus-120/wasm32-wasip2/release/gain.wasm" "$dist/.gain-minus-120.wasm.$$"
mv "$dist/.gain-minus-120.wasm.$$" "$dist/gain-minus-120.wasm"
