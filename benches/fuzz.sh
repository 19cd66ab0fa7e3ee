#!/usr/bin/env bash
# Long fuzzing: every target of tests/fuzz for MINUTES each (default 10), from the committed
# seeds, one after the other on one core. Prints the table BENCHMARKS.md keeps (executions,
# edges covered, features, corpus size). Any crash stops it, with the input kept in
# tests/fuzz/artifacts/.
#   benches/fuzz.sh [MINUTES] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
shift || true
echo "== fuzzing for $minutes min per target on $(nproc) cores, $(date -u +%F)"
exec tests/fuzz/run.sh $((minutes * 60)) "$@"
