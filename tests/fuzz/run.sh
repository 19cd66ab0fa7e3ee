#!/usr/bin/env bash
# Builds the fuzz targets with coverage instrumentation (libFuzzer, stable toolchain) and runs
# each for SECONDS, starting from the seeds in corpus/<target>/ (copied: the repository's corpus
# is never changed by a run). Exits non-zero on the first crash, leak of memory past the limits,
# or timeout, and says where the input that did it is kept.
#   tests/fuzz/run.sh [SECONDS] [TARGET...]     (default: 15 s each, every target)
# Prints one line per target: executions, coverage (edges) and features, corpus size.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
seconds=${1:-15}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=($(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' "$here/Cargo.toml" | grep -v '^tidecast-fuzz$'))
fi
export CARGO_TARGET_DIR=${TIDECAST_FUZZ_TARGET:-${CARGO_TARGET_DIR:-$HOME/.cache/tidecast/target}/fuzz}
# Coverage-guided instrumentation with stable rustc options only (what cargo-fuzz passes, less
# its nightly-only sanitizer flag): SanitizerCoverage with inline 8-bit counters, a PC table and
# comparison tracing, plus the `fuzzing` cfg.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
# An explicit --target keeps these flags off build scripts and proc macros (as cargo-fuzz does).
triple=$(rustc -vV | sed -n 's/^host: //p')
echo "== building fuzz targets (${targets[*]})"
(cd "$here" && cargo build -q --locked --bins --target "$triple")
bin="$CARGO_TARGET_DIR/$triple/debug"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
artifacts=${TIDECAST_FUZZ_ARTIFACTS:-$here/artifacts}
mkdir -p "$artifacts"
printf '%-16s %10s %8s %8s %8s\n' target executions cov ft corpus
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  cp -r "$here/corpus/$t/." "$work/$t/" 2>/dev/null || true
  log="$work/$t.log"
  # Memory: any single allocation over 256 MiB or a resident size over 1 GiB is a finding
  # (a parameter from the input sized something without a bound); a run over 10 s is a hang.
  if ! "$bin/$t" "$work/$t" -max_total_time="$seconds" -timeout=10 \
      -rss_limit_mb=1024 -malloc_limit_mb=256 -max_len=65536 -print_final_stats=1 \
      -artifact_prefix="$artifacts/$t-" >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz target $t found a problem; the input is in $artifacts/ (reproduce: $bin/$t FILE)" >&2
    exit 1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
  corpus=$(find "$work/$t" -type f | wc -l)
  printf '%-16s %10s %8s %8s %8s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$corpus"
done
echo "fuzz: ${#targets[@]} passed, 0 failed"
