#!/usr/bin/env python3
"""The benchmark harness behind bench/run.sh (see BENCHMARKS.md for what it measures).

Scenarios, each run --runs times (medians reported):
  backlog  N exited containers' logs: the ceiling (lrbench read, straight from the Docker
           API) and the agent forwarding the same containers to the fast counter.
           The agent only reads containers that start after it did (it has no state
           here), so it is started first and then frozen (SIGSTOP) while the containers
           run and exit; it is thawed (SIGCONT) when the timing starts. The ceiling
           reads the same exited containers while the agent is frozen.
  live     N containers printing as fast as they can while they are followed: the
           ceiling (lrbench read --follow) and the agent, on separate sets of containers.
  latency  one container offering ~--rate lines/s; percentiles of record timestamp →
           received by the counter.
  idle     RSS and CPU of an agent with one route following --idle-containers
           containers that print nothing.
  rsyslog, relp, osmem
           backlog of --other-lines lines (1 container) forwarded to rsyslog (imtcp,
           octet-counted RFC 5424; imrelp, the same messages over RELP with its default
           window of 128) and to osmem-server (_bulk).
"""

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

IMAGE = "logroute-test-busybox:latest"
# 95 bytes + the line number: lines of 96-102 bytes.
PREFIX = "benchmark line with some padding so that every line is about one hundred bytes long, n="
TICK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def now():
    return time.time()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def loadavg():
    return " ".join(open("/proc/loadavg").read().split()[:3])


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status_int(pid, key):
    """A number from /proc/PID/status (kB for sizes)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def ctx_switches(pid):
    """Context switches of all of the process's threads."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            for line in open(f"/proc/{pid}/task/{tid}/status"):
                if "ctxt_switches" in line:
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def status_mib(pid, key):
    return status_int(pid, key) / 1024


def docker(*args, check=True):
    r = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}...: {r.stderr.strip()}")
    return r.stdout.strip()


class Bench:
    def __init__(self, args):
        self.args = args
        self.bindir = args.bin_dir
        self.lrbench = os.path.join(self.bindir, "lrbench")
        self.logroute = os.path.join(self.bindir, "logroute")
        self.work = tempfile.mkdtemp(prefix="lrbench-")
        self.seq = 0
        self.labels = []

    # ---- workloads ----------------------------------------------------------------

    def label(self):
        self.seq += 1
        lab = f"{os.getpid()}-{self.seq}"
        self.labels.append(lab)
        return lab

    def create(self, label, n, lines, cmd=None):
        """n containers printing `lines` lines in all (split evenly); their ids."""
        ids = []
        first = 1
        for i in range(n):
            count = lines // n + (1 if i < lines % n else 0)
            script = cmd(first, count) if cmd else f"seq {first} {first + count - 1} | sed 's/^/{PREFIX}/'"
            first += count
            ids.append(docker("create", "--network", "none", "--label", "lrbench=1",
                              "--label", f"lrbench.run={label}", "--name", f"lrbench-{label}-{i}",
                              IMAGE, "sh", "-c", script))
        return ids

    def remove(self, label):
        ids = docker("ps", "-aq", "--filter", f"label=lrbench.run={label}", check=False).split()
        if ids:
            docker("rm", "-f", *ids, check=False)

    def cleanup(self):
        for lab in self.labels:
            self.remove(lab)

    def lrbench_json(self, *args):
        out = subprocess.run([self.lrbench, *args], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"lrbench {args[0]} failed: {out.stderr.strip()}")
        return json.loads(out.stdout)

    # ---- the agent ----------------------------------------------------------------

    def start_agent(self, label, sink_yaml):
        d = tempfile.mkdtemp(dir=self.work)
        routes = os.path.join(d, "routes.yaml")
        with open(routes, "w") as f:
            f.write(f"""apiVersion: logroute.dev/v1alpha1
kind: LogRoute
metadata: {{name: bench, namespace: logroute-system}}
spec:
  selector: {{hostContainers: {{matchLabels: {{lrbench.run: "{label}"}}}}}}
  sinks: [{sink_yaml}]
""")
        port = free_port()
        logf = open(os.path.join(d, "agent.log"), "w")
        proc = subprocess.Popen(
            [self.logroute, "agent", "--routes", routes, "--state-dir", os.path.join(d, "state"),
             "--metrics-addr", f"127.0.0.1:{port}", "--node-name", "bench"],
            stdout=logf, stderr=subprocess.STDOUT,
            env={**os.environ, "LOGROUTE_LOG": os.environ.get("LOGROUTE_LOG", "warn")})
        proc.metrics_url = f"http://127.0.0.1:{port}/metrics"
        proc.log_path = logf.name
        deadline = now() + 30
        while now() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited: {open(proc.log_path).read()[-2000:]}")
            if self.metric(proc, "logroute_agent_routes") >= 1:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("agent did not load its route within 30 s")
        # One line through the whole path: proves the agent watches Docker's events (a
        # container that starts before that is never seen once it has exited) and that
        # the sink is connected. rsyslog and osmem expect one line more; the counter
        # sets it aside.
        probe = self.create(label, 1, 1, cmd=lambda first, count: "echo probe")
        self.lrbench_json("start", *probe)
        while self.metric(proc, "logroute_agent_records_routed_total") < 1:
            if now() > deadline:
                raise RuntimeError(f"the probe line was not routed within 30 s: {open(proc.log_path).read()[-2000:]}")
            time.sleep(0.05)
        docker("rm", "-f", *probe, check=False)
        return proc

    def metric(self, proc, name):
        try:
            body = urllib.request.urlopen(proc.metrics_url, timeout=2).read().decode()
        except OSError:
            return 0
        return sum(float(l.rsplit(" ", 1)[1]) for l in body.splitlines()
                   if l.startswith(name) and not l.startswith("#")
                   and l[len(name)] in " {")

    @staticmethod
    def stop(proc):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # ---- sinks: a sink is (yaml, wait(expected) -> end time or None, stop) --------------

    def counter(self, expect, deadline):
        port = free_port()
        proc = subprocess.Popen([self.lrbench, "count", "--port", str(port), "--expect", str(expect),
                                 "--deadline", str(deadline)], stdout=subprocess.PIPE, text=True)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.02)
        # The probe above was a connection with no frames: harmless for the counter.

        def wait():
            out, _ = proc.communicate(timeout=deadline + 30)
            return json.loads(out)
        yaml = f'{{name: counter, syslog: {{address: "127.0.0.1:{port}"}}}}'
        return yaml, wait, proc

    def rsyslog(self, relp=False):
        d = tempfile.mkdtemp(dir=self.work)
        port = free_port()
        out = os.path.join(d, "received.log")
        conf = os.path.join(d, "rsyslog.conf")
        module = "imrelp" if relp else "imtcp"
        with open(conf, "w") as f:
            f.write(f"""global(workDirectory="{d}" maxMessageSize="64k")
module(load="{module}")
template(name="msgonly" type="string" string="%msg%\\n")
input(type="{module}" address="127.0.0.1" port="{port}" ruleset="bench")
ruleset(name="bench") {{ action(type="omfile" file="{out}" template="msgonly" asyncWriting="on" flushOnTXEnd="off" ioBufferSize="256k") }}
""")
        proc = subprocess.Popen(["/usr/sbin/rsyslogd", "-n", "-f", conf, "-i", os.path.join(d, "pid")])
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.02)
        transport = ", transport: relp" if relp else ""
        return f'{{name: rsyslog, syslog: {{address: "127.0.0.1:{port}"{transport}}}}}', out, proc

    def osmem(self):
        binary = subprocess.run(["python3", "-c", "import osmem_server;print(osmem_server.resolve_binary())"],
                                capture_output=True, text=True, check=True).stdout.strip()
        proc = subprocess.Popen([binary, "-addr", "127.0.0.1:0", "-no-stdin-watch", "-no-ja"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        url = json.loads(proc.stdout.readline())["url"]
        # Drain stdout so the server never blocks on a full pipe.
        subprocess.Popen(["cat"], stdin=proc.stdout, stdout=subprocess.DEVNULL)
        return f'{{name: search, elasticsearch: {{endpoints: ["{url}"], index: lrbench}}}}', url, proc

    # ---- scenarios ---------------------------------------------------------------

    def backlog(self, sink, n, lines):
        label = self.label()
        deadline = self.args.deadline
        # rsyslog and osmem also get the probe line of start_agent.
        if sink == "counter":
            yaml, wait, sink_proc = self.counter(lines, deadline)
        elif sink in ("rsyslog", "relp"):
            yaml, path, sink_proc = self.rsyslog(relp=sink == "relp")
            wait = lambda: wait_file_lines(path, lines + 1, deadline)
        else:
            yaml, url, sink_proc = self.osmem()
            wait = lambda: wait_es_count(url, lines + 1, deadline)
        agent = self.start_agent(label, yaml)
        try:
            os.kill(agent.pid, signal.SIGSTOP)
            ids = self.create(label, n, lines)
            self.lrbench_json("start", *ids)
            docker("wait", *ids)
            ceiling = self.lrbench_json("read", *ids)
            load = loadavg()
            cpu0, cs0 = cpu_seconds(agent.pid), ctx_switches(agent.pid)
            t0 = now()
            os.kill(agent.pid, signal.SIGCONT)
            perf = start_perf(agent.pid, f"{label}-backlog-{sink}-{n}c")
            got = wait()
            cpu1 = cpu_seconds(agent.pid)
            stop_perf(perf)
            cs1 = ctx_switches(agent.pid)
            hwm = status_mib(agent.pid, "VmHWM")
            sends = self.metric(agent, "logroute_agent_send_latency_seconds_count")
            end = got["last_received"] if sink == "counter" else got["end"]
            received = got["messages"] - (sink != "counter")
            r = {
                "ceiling_lines": ceiling["lines"],
                "ceiling_lps": ceiling["lines"] / (ceiling["end"] - ceiling["start"]),
                "agent_lines": received,
                "agent_lps": received / (end - t0),
                "cpu_s_per_m": (cpu1 - cpu0) / (lines / 1e6),
                "peak_rss_mib": hwm,
                "records_per_send": lines / sends if sends else float("nan"),
                "ctx_switches_per_k": (cs1 - cs0) / (lines / 1e3),
                "complete": received == lines and ceiling["lines"] == lines,
                "load": load,
            }
            r["ratio"] = r["agent_lps"] / r["ceiling_lps"]
            return r
        finally:
            try:
                os.kill(agent.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.stop(agent)
            sink_proc.kill()
            sink_proc.wait()
            self.remove(label)

    def live(self, n, lines):
        deadline = self.args.deadline
        # The ceiling: a raw follow of its own set of containers.
        clabel = self.label()
        ids = self.create(clabel, n, lines)
        ceiling = self.lrbench_json("read", "--follow", "--start", *ids)
        self.remove(clabel)
        label = self.label()
        yaml, wait, counter = self.counter(lines, deadline)
        agent = self.start_agent(label, yaml)
        try:
            ids = self.create(label, n, lines)
            load = loadavg()
            cpu0, cs0 = cpu_seconds(agent.pid), ctx_switches(agent.pid)
            t0 = self.lrbench_json("start", *ids)["start"]
            got = wait()
            cpu1, cs1 = cpu_seconds(agent.pid), ctx_switches(agent.pid)
            sends = self.metric(agent, "logroute_agent_send_latency_seconds_count")
            r = {
                "ceiling_lines": ceiling["lines"],
                "ceiling_lps": ceiling["lines"] / (ceiling["end"] - ceiling["start"]),
                "agent_lines": got["messages"],
                "agent_lps": got["messages"] / (got["last_received"] - t0),
                "cpu_s_per_m": (cpu1 - cpu0) / (lines / 1e6),
                "peak_rss_mib": status_mib(agent.pid, "VmHWM"),
                "records_per_send": lines / sends if sends else float("nan"),
                "ctx_switches_per_k": (cs1 - cs0) / (lines / 1e3),
                # The raw follow may lose lines to dockerd's early end of stream (see
                # DESIGN.md); the agent may not.
                "complete": got["messages"] == lines,
                "load": load,
            }
            r["ratio"] = r["agent_lps"] / r["ceiling_lps"]
            return r
        finally:
            self.stop(agent)
            counter.kill()
            counter.wait()
            self.remove(label)

    def latency(self, rate, seconds):
        # Batches of `batch` lines every 10 ms (minus the measured cost of a batch).
        batch = max(1, rate // 100)
        iters = max(1, int(seconds * 100))
        lines = batch * iters
        pause = self.args.pause_us

        def paced(first, count):
            return (f"i=0; while [ $i -lt {iters} ]; do s=$(({first} + i * {batch})); "
                    f"seq $s $((s + {batch - 1})) | sed 's/^/{PREFIX}/'; usleep {pause}; i=$((i + 1)); done")
        label = self.label()
        yaml, wait, counter = self.counter(lines, seconds * 3 + self.args.deadline)
        agent = self.start_agent(label, yaml)
        try:
            ids = self.create(label, 1, lines, cmd=paced)
            load = loadavg()
            cpu0 = cpu_seconds(agent.pid)
            self.lrbench_json("start", *ids)
            got = wait()
            cpu1 = cpu_seconds(agent.pid)
            span = got["last_record"] - got["first_record"]
            return {
                "offered_lps": got["messages"] / span if span > 0 else float("nan"),
                "p50_ms": got["latency_ms"]["p50"],
                "p90_ms": got["latency_ms"]["p90"],
                "p99_ms": got["latency_ms"]["p99"],
                "p999_ms": got["latency_ms"]["p999"],
                "max_ms": got["latency_ms"]["max"],
                "cpu_s_per_m": (cpu1 - cpu0) / (lines / 1e6),
                "cpu_pct": 100 * (cpu1 - cpu0) / max(span, 1e-9),
                "complete": got["messages"] == lines,
                "load": load,
            }
        finally:
            self.stop(agent)
            counter.kill()
            counter.wait()
            self.remove(label)

    def idle(self, n):
        label = self.label()
        yaml, _, counter = self.counter(1, 3600)
        agent = self.start_agent(label, yaml)
        try:
            time.sleep(2)
            base_rss = status_mib(agent.pid, "VmRSS")
            before = self.metric(agent, "logroute_agent_containers_followed")
            ids = self.create(label, n, n, cmd=lambda first, count: "exec sleep 3600")
            self.lrbench_json("start", *ids)
            deadline = now() + 30
            while self.metric(agent, "logroute_agent_containers_followed") < before + n:
                if now() > deadline:
                    raise RuntimeError("the agent did not follow the idle containers within 30 s")
                time.sleep(0.1)
            time.sleep(3)
            load = loadavg()
            cpu0, t0 = cpu_seconds(agent.pid), now()
            time.sleep(self.args.idle_seconds)
            cpu1, t1 = cpu_seconds(agent.pid), now()
            return {
                "containers": n,
                "rss_before_mib": base_rss,
                "idle_rss_mib": status_mib(agent.pid, "VmRSS"),
                "idle_rss_anon_mib": status_mib(agent.pid, "RssAnon"),
                "idle_rss_file_mib": status_mib(agent.pid, "RssFile"),
                "threads": status_int(agent.pid, "Threads"),
                "peak_rss_mib": status_mib(agent.pid, "VmHWM"),
                "idle_cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0),
                "complete": True,
                "load": load,
            }
        finally:
            self.stop(agent)
            counter.kill()
            counter.wait()
            self.remove(label)


def start_perf(pid, name):
    """With LRBENCH_PERF=DIR, sample the agent while it works (flat profile; add
    LRBENCH_PERF_ARGS="-g" for call graphs of a frame-pointer build)."""
    d = os.environ.get("LRBENCH_PERF")
    if not d:
        return None
    os.makedirs(d, exist_ok=True)
    extra = os.environ.get("LRBENCH_PERF_ARGS", "").split()
    return subprocess.Popen(["perf", "record", "-q", "-F", "499", *extra, "-p", str(pid),
                             "-o", os.path.join(d, f"{name}.data")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_perf(perf):
    if perf:
        perf.send_signal(signal.SIGINT)
        perf.wait()


def wait_file_lines(path, expect, deadline):
    """Count lines as rsyslog appends them; the time the last one was seen."""
    end_by = now() + deadline
    seen, offset = 0, 0
    while now() < end_by:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            data = b""
        offset += len(data)
        seen += data.count(b"\n")
        if seen >= expect:
            return {"messages": seen, "end": now()}
        time.sleep(0.02)
    return {"messages": seen, "end": now()}


def wait_es_count(url, expect, deadline):
    end_by = now() + deadline
    seen = 0
    while now() < end_by:
        try:
            urllib.request.urlopen(urllib.request.Request(f"{url}/_refresh", method="POST"), timeout=10).read()
            body = json.loads(urllib.request.urlopen(f"{url}/lrbench/_count", timeout=10).read())
            seen = body.get("count", 0)
        except OSError:
            pass
        if seen >= expect:
            return {"messages": seen, "end": now()}
        time.sleep(0.1)
    return {"messages": seen, "end": now()}


def median(rows, key):
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else float("nan")


def spread(rows, key, fmt):
    vals = [r[key] for r in rows]
    return f"{fmt.format(median(rows, key))} ({fmt.format(min(vals))}–{fmt.format(max(vals))})" if len(vals) > 1 \
        else fmt.format(vals[0])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny run: every path once, counts checked")
    p.add_argument("--bin-dir", default="target/release")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--containers", default="1,8")
    p.add_argument("--other-lines", type=int, default=200_000, help="lines for rsyslog and osmem")
    p.add_argument("--rate", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--pause-us", type=int, default=8000,
                   help="sleep between 10 ms batches of the latency workload (the rest is fork+print)")
    p.add_argument("--idle-containers", type=int, default=20)
    p.add_argument("--idle-seconds", type=float, default=10)
    p.add_argument("--deadline", type=float, default=300)
    p.add_argument("--scenarios", default="backlog,live,latency,idle,rsyslog,relp,osmem")
    p.add_argument("--json", help="also write all results here")
    a = p.parse_args()
    if a.smoke:
        a.runs, a.lines, a.containers, a.other_lines = 1, 3000, "1", 3000
        a.rate, a.seconds, a.idle_containers, a.idle_seconds, a.deadline = 1000, 1, 2, 1, 60
    b = Bench(a)
    scenarios = a.scenarios.split(",")
    counts = [int(c) for c in a.containers.split(",")]
    results = {"machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "kernel": platform.release(),
                           "docker": docker("version", "-f", "{{.Server.Version}}"),
                           "load_at_start": loadavg()},
               "command": os.environ.get("LRBENCH_COMMAND", " ".join(sys.argv)), "runs": {}}
    failures = []
    try:
        for name in scenarios:
            plan = {
                "backlog": [(f"backlog {n}c", lambda n=n: b.backlog("counter", n, a.lines)) for n in counts],
                "live": [(f"live {n}c", lambda n=n: b.live(n, a.lines)) for n in counts],
                "latency": [("latency", lambda: b.latency(a.rate, a.seconds))],
                "idle": [("idle", lambda: b.idle(a.idle_containers))],
                "rsyslog": [("rsyslog 1c", lambda: b.backlog("rsyslog", 1, a.other_lines))],
                "relp": [("rsyslog relp 1c", lambda: b.backlog("relp", 1, a.other_lines))],
                "osmem": [("osmem 1c", lambda: b.backlog("osmem", 1, a.other_lines))],
            }[name]
            for key, fn in plan:
                rows = results["runs"].setdefault(key, [])
                for i in range(a.runs):
                    log(f"== {key} run {i + 1}/{a.runs} (load {loadavg()})")
                    r = run_with_retries(fn)
                    log("   " + json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))
                    rows.append(r)
                    if not r["complete"]:
                        failures.append(f"{key} run {i + 1}: not every line arrived: {r}")
    finally:
        b.cleanup()
        if not os.environ.get("LRBENCH_KEEP"):
            shutil.rmtree(b.work, ignore_errors=True)
        else:
            log(f"agent logs and receiver files kept in {b.work}")
    results["machine"]["load_at_end"] = loadavg()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    print(report(results))
    for f in failures:
        log("FAILED: " + f)
    if a.smoke:
        log("SMOKE OK" if not failures else "SMOKE FAILED")
    sys.exit(1 if failures else 0)


def run_with_retries(fn, attempts=3):
    """Run one measurement; when it breaks (dockerd restarted by someone else's test, a
    port taken), wait for dockerd and run it again."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - any failure of a run is retried
            if attempt == attempts:
                raise
            log(f"   run failed ({e}); retrying")
            deadline = now() + 120
            while subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
                if now() > deadline:
                    raise
                time.sleep(1)


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def report(res):
    m = res["machine"]
    out = [f"Machine: {m['nproc']} CPUs, {m['cpu']}, kernel {m['kernel']}, dockerd {m['docker']}; "
           f"load average {m['load_at_start']} at start, {m['load_at_end']} at end.",
           f"Command: `{res['command']}`",
           "",
           "| scenario | runs | ceiling lines/s | agent lines/s | agent / ceiling | agent CPU-s per M lines | agent peak RSS MiB | load (1/5/15 min) |",
           "|---|---|---|---|---|---|---|---|"]
    for key, rows in res["runs"].items():
        if "ceiling_lps" in rows[0]:
            out.append(f"| {key} | {len(rows)} | {spread(rows, 'ceiling_lps', '{:,.0f}')} | "
                       f"{spread(rows, 'agent_lps', '{:,.0f}')} | {spread(rows, 'ratio', '{:.0%}')} | "
                       f"{spread(rows, 'cpu_s_per_m', '{:.2f}')} | {spread(rows, 'peak_rss_mib', '{:.1f}')} | "
                       f"{rows[len(rows) // 2]['load']} |")
    for key, rows in res["runs"].items():
        if key == "latency":
            out += ["", "| latency | runs | offered lines/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | agent CPU % | load |",
                    "|---|---|---|---|---|---|---|---|---|---|",
                    f"| fast counter | {len(rows)} | {spread(rows, 'offered_lps', '{:,.0f}')} | "
                    f"{spread(rows, 'p50_ms', '{:.1f}')} | {spread(rows, 'p90_ms', '{:.1f}')} | "
                    f"{spread(rows, 'p99_ms', '{:.1f}')} | {spread(rows, 'p999_ms', '{:.1f}')} | "
                    f"{spread(rows, 'max_ms', '{:.1f}')} | {spread(rows, 'cpu_pct', '{:.1f}')} | {rows[0]['load']} |"]
        if key == "idle":
            out += ["", "| idle | runs | containers | RSS before containers MiB | idle RSS MiB (anon + file) | peak RSS MiB | threads | idle CPU % | load |",
                    "|---|---|---|---|---|---|---|---|---|",
                    f"| one route | {len(rows)} | {rows[0]['containers']} | {spread(rows, 'rss_before_mib', '{:.1f}')} | "
                    f"{spread(rows, 'idle_rss_mib', '{:.1f}')} ({median(rows, 'idle_rss_anon_mib'):.1f} + {median(rows, 'idle_rss_file_mib'):.1f}) | "
                    f"{spread(rows, 'peak_rss_mib', '{:.1f}')} | {rows[0]['threads']} | "
                    f"{spread(rows, 'idle_cpu_pct', '{:.2f}')} | {rows[0]['load']} |"]
    out.append("")
    out.append("Medians, with (min–max) over the runs.")
    return "\n".join(out)


if __name__ == "__main__":
    main()
