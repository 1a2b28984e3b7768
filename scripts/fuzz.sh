#!/usr/bin/env bash
# Fuzz the parsers and encoders that see hostile input, with libFuzzer (fuzz/).
#
# Stable Rust only: the targets are instrumented with `-C` flags (SanitizerCoverage
# through `-Cpasses=sancov-module`), which is what cargo-fuzz does minus the nightly-only
# AddressSanitizer (logroute forbids unsafe code outside one mmap, which no target
# touches). No cargo-fuzz install is needed; libfuzzer-sys builds libFuzzer with the
# system C++ compiler.
#
# Usage: [FUZZ_PROFILE=smoke] scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   default 20 seconds for each of: docker_lines cri_lines syslog_encode bulk_encode bulk_response
#   route_document compile_logroute
#
# FUZZ_PROFILE: `release` (default; optimized, for long runs) or `smoke` (unoptimized, no
# debug info: builds in about half the time, for the short run in .ci/run).
#
# Each target starts from fuzz/seeds/<target> (committed) and grows fuzz/corpus/<target>
# (not committed). A crash stops the run and leaves its input in fuzz/artifacts/<target>/;
# turn it into a unit test next to the code, fix it, and add the input to the seeds.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
secs="${1:-20}"
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  targets=(docker_lines cri_lines syslog_encode bulk_encode bulk_response route_document compile_logroute)
fi

host="$(rustc -vV | sed -n 's/^host: //p')"
# An explicit --target keeps these flags off build scripts and proc macros.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks"
profile="${FUZZ_PROFILE:-release}"
cd "$repo/fuzz"
echo "== building fuzz targets ($host, profile $profile)"
cargo build --profile "$profile" --locked --target "$host" --bins

status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t"
  echo "== fuzzing $t for ${secs}s"
  if ! "target/$host/$profile/$t" -max_total_time="$secs" -print_final_stats=1 \
      -artifact_prefix="artifacts/$t/" -max_len=65536 "corpus/$t" "seeds/$t" \
      > "artifacts/$t/run.log" 2>&1; then
    echo "!! $t found a failure; input in fuzz/artifacts/$t/, log:" >&2
    tail -n 40 "artifacts/$t/run.log" >&2
    status=1
  fi
  grep -E "^stat::number_of_executed_units|^stat::new_units_added" "artifacts/$t/run.log" | tr '\n' ' '
  echo
done
exit "$status"
