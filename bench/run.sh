#!/usr/bin/env bash
# The benchmark harness: builds the release binaries (logroute and the harness's own
# lrbench: Docker API reader for the ceiling, fast syslog counter), builds the busybox
# image if needed, and runs bench/harness.py, which prints a Markdown table (see
# BENCHMARKS.md). Needs root, dockerd, rsyslogd and osmem-server.
#   bash bench/run.sh                 # full run: 1,000,000 lines, 1 and 8 containers, 3 runs
#   bash bench/run.sh --smoke         # a few thousand lines, every path once (CI)
#   bash bench/run.sh --help          # all options
# LRBENCH_BIN_DIR=DIR uses binaries built elsewhere (tests/bench_smoke.rs) instead of
# building release ones.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${LRBENCH_BIN_DIR:-}" ]; then
  bin_dir="$LRBENCH_BIN_DIR"
else
  cargo build --release --locked --quiet --bin logroute --bin lrbench
  bin_dir=target/release
fi

if ! docker image inspect logroute-test-busybox:latest >/dev/null 2>&1; then
  ctx="$(mktemp -d)"
  trap 'rm -rf "$ctx"' EXIT
  cp /bin/busybox "$ctx/busybox"
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox","--install","-s","/bin"]\nENV PATH=/bin\nCMD ["sh"]\n' > "$ctx/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q -t logroute-test-busybox:latest "$ctx" >/dev/null
fi

LRBENCH_COMMAND="bash bench/run.sh $*" python3 bench/harness.py --bin-dir "$bin_dir" "$@"
