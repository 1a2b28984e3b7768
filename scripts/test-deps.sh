#!/usr/bin/env bash
# Install and start what the test suite needs on a Debian machine (run as root):
# Docker (dockerd with --live-restore), rsyslog with TLS and RELP (imrelp),
# busybox-static for test images, nginx and openssl for the TLS/auth front of the search
# server, the pinned osmem-server from PyPI, the chart tools, promtool (Debian's prometheus package)
# to lint the metrics exposition and to check and unit-test the alert rules
# (tests/alerts.rs), and containerd with runc for the CRI log tests (each test starts
# a containerd of its own; protoc builds the CRI client crate).
# Idempotent: safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test-deps.sh installs packages and starts dockerd: run it as root" >&2
  exit 1
fi

log "apt packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  docker.io rsyslog rsyslog-gnutls rsyslog-relp busybox-static nginx-light openssl gnutls-bin \
  ca-certificates procps iproute2 python3-pip python3-venv prometheus \
  containerd runc protobuf-compiler >/dev/null

log "python packages"
if [ -f tests/requirements-osmem.txt ]; then
  python3 -m pip install -q --disable-pip-version-check --require-hashes -r tests/requirements-osmem.txt
fi
if [ -x scripts/install-tools.sh ]; then
  bash scripts/install-tools.sh
fi

# The distribution's rsyslog service would hold port 514 and write to /var/log; the
# tests start their own rsyslogd instances on free loopback ports.
pkill -x rsyslogd 2>/dev/null || true

log "dockerd"
if ! docker info >/dev/null 2>&1; then
  # --live-restore keeps containers running while a test restarts the daemon.
  setsid dockerd --live-restore >"${TMPDIR:-/tmp}/logroute-dockerd.log" 2>&1 < /dev/null &
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start:" >&2; tail -20 "${TMPDIR:-/tmp}/logroute-dockerd.log" >&2; exit 1; }
fi
docker version --format 'docker server {{.Server.Version}}'
