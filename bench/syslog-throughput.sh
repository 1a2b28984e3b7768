#!/usr/bin/env bash
# One quick throughput run: a busybox container prints N lines (default 200000), the
# release agent forwards them to a local rsyslogd over TCP (octet-counted RFC 5424), and
# the script reports lines/s (first line written → last line received) and the agent's
# peak RSS. Needs root, dockerd and rsyslogd (scripts/test-deps.sh installs them).
#   bash bench/syslog-throughput.sh [LINES]
set -euo pipefail
cd "$(dirname "$0")/.."
lines="${1:-200000}"
work="$(mktemp -d)"
trap 'kill $agent_pid $rsyslog_pid 2>/dev/null || true; docker rm -f lr-bench >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

cargo build --release --locked --quiet
if ! docker image inspect logroute-test-busybox:latest >/dev/null 2>&1; then
  mkdir "$work/img" && cp /bin/busybox "$work/img/busybox"
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox","--install","-s","/bin"]\n' > "$work/img/Dockerfile"
  docker build -q -t logroute-test-busybox:latest "$work/img" >/dev/null
fi

port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
cat > "$work/rsyslog.conf" <<CONF
global(workDirectory="$work" maxMessageSize="64k")
module(load="imtcp")
template(name="msgonly" type="string" string="%msg%\n")
input(type="imtcp" address="127.0.0.1" port="$port" ruleset="bench")
ruleset(name="bench") { action(type="omfile" file="$work/received.log" template="msgonly" asyncWriting="on" flushOnTXEnd="off" ioBufferSize="256k") }
CONF
/usr/sbin/rsyslogd -n -f "$work/rsyslog.conf" -i "$work/rsyslog.pid" &
rsyslog_pid=$!
cat > "$work/routes.yaml" <<ROUTES
apiVersion: logroute.dev/v1alpha1
kind: LogRoute
metadata: {name: bench, namespace: logroute-system}
spec:
  selector: {hostContainers: {names: [lr-bench]}}
  sinks: [{name: rsyslog, syslog: {address: "127.0.0.1:$port"}}]
ROUTES
LOGROUTE_LOG=warn target/release/logroute agent --routes "$work/routes.yaml" --state-dir "$work/state" \
  --metrics-addr 127.0.0.1:0 &
agent_pid=$!
sleep 2
start=$(date +%s.%N)
docker run -d --name lr-bench --network none logroute-test-busybox:latest \
  sh -c "seq 1 $lines | sed 's/^/benchmark line with some padding to make it about one hundred bytes long, number /'" >/dev/null
while [ "$(wc -l < "$work/received.log" 2>/dev/null || echo 0)" -lt "$lines" ]; do sleep 0.05; done
end=$(date +%s.%N)
rss=$(awk '/VmHWM/ {print $2}' /proc/$agent_pid/status)
python3 - "$lines" "$start" "$end" "$rss" <<'PY'
import sys
n, start, end, rss = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
print(f"lines={n} seconds={end-start:.2f} lines_per_second={n/(end-start):.0f} agent_peak_rss_mib={rss/1024:.1f}")
PY
