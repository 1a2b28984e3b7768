#!/usr/bin/env bash
# Run the agent on this machine's Docker with LogRoute files, no cluster needed:
#   bash scripts/run-local.sh [ROUTE.yaml ...]
# Defaults to examples/host-containers.yaml, which prints every non-pod container's
# output as JSON lines (stdout sink). On Debian, as root, it installs and starts Docker
# when it is missing. Metrics: http://127.0.0.1:9091/metrics
set -euo pipefail
cd "$(dirname "$0")/.."

if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    command -v dockerd >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null; }
    if [ ! -S /var/run/docker.sock ]; then
      setsid dockerd --live-restore >"${TMPDIR:-/tmp}/logroute-dockerd.log" 2>&1 </dev/null &
      for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    fi
  fi
  docker info >/dev/null 2>&1 || { echo "Docker is not reachable at /var/run/docker.sock; start it first" >&2; exit 1; }
fi

cargo build --release --locked --quiet
routes=("$@")
[ ${#routes[@]} -gt 0 ] || routes=(examples/host-containers.yaml)
state="${LOGROUTE_STATE_DIR:-$PWD/.state}"
mkdir -p "$state"
echo "logroute agent: routes ${routes[*]}; metrics on 127.0.0.1:9091; Ctrl-C to stop" >&2
exec target/release/logroute agent --routes "${routes[@]}" --state-dir "$state" \
  --metrics-addr 127.0.0.1:9091 --namespace logroute-system
