"""scripts/bench-scale: vigil scaled out on Kafka against one `vigil serve`, in
one run on this machine (the broker shares the cores). Not part of the tests.

  1. serve: loadgen at full speed over gRPC for BENCH_SECONDS -> records/s.
  2. ingest -> Kafka (tansu) -> detect with 1, 2 and 3 detector processes:
     records/s accepted by ingest, records/s through the detectors (until
     their consumption caught up), the ratio to (1), and CPU seconds per
     process; the Kafka hop (receipt at ingest -> detector) p50/p99.
  3. alert latency at a modest rate, send -> alert in alerts.jsonl, for serve
     and for ingest + 1 detect: the difference is what the Kafka hop and the
     commit interval add.

Usage: scripts/bench-scale (builds release, starts its own broker).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIGIL = sys.argv[1]
SECONDS = int(os.environ.get("BENCH_SECONDS", "20"))
RATE = int(os.environ.get("BENCH_LATENCY_RATE", "5000"))
CLK = os.sysconf("SC_CLK_TCK")
WORK = Path(tempfile.mkdtemp(prefix="vigil-bench-scale."))
ENV = dict(os.environ, VIGIL_BROKER_RUN=str(WORK / "broker"), RUST_LOG="warn")
procs = []


def port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def metrics(http):
    out = {}
    text = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def total(http, prefix):
    return sum(v for k, v in metrics(http).items() if k.split("{")[0] == prefix)


def start(args, name, config):
    d = WORK / name
    d.mkdir()
    (d / "vigil.yaml").write_text(json.dumps(config))
    log = open(d / "log", "wb")
    p = subprocess.Popen([VIGIL, *args, "--config", str(d / "vigil.yaml"), "--data-dir", str(d)],
                         stdout=log, stderr=subprocess.STDOUT, env=ENV)
    procs.append(p)
    return p, d


def ready(http, p, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if p.poll() is not None:
            raise SystemExit(f"process exited: {p.args}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=1).status == 200:
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit(f"not ready: {p.args}")


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def loadgen(grpc, *extra):
    out = subprocess.run([VIGIL, "loadgen", "--endpoint", f"http://127.0.0.1:{grpc}", "--batch", "1000",
                          "--concurrency", "4", "--json", *extra], capture_output=True, text=True, env=ENV)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def quantile(buckets, q):
    """A quantile from cumulative Prometheus histogram buckets [(le, count)]."""
    buckets = sorted(buckets)
    n = buckets[-1][1] if buckets else 0
    if n == 0:
        return float("nan")
    for le, c in buckets:
        if c >= q * n:
            return le
    return float("inf")


def hop(https):
    merged = {}
    for h in https:
        for k, v in metrics(h).items():
            if k.startswith("vigil_detect_hop_seconds_bucket"):
                le = k.split('le="')[1].split('"')[0]
                le = float("inf") if le == "+Inf" else float(le)
                merged[le] = merged.get(le, 0) + v
    b = list(merged.items())
    return quantile(b, 0.5) * 1000, quantile(b, 0.99) * 1000


def main():
    kport = port()
    brokers = f"127.0.0.1:{kport}"
    subprocess.run([str(ROOT / "scripts" / "broker"), "start", str(kport), "vigil.alerts"], env=ENV, check=True,
                   stdout=subprocess.DEVNULL)
    tansu = subprocess.run([str(ROOT / "scripts" / "broker"), "path"], capture_output=True, text=True).stdout.strip()
    broker_pid = int((WORK / "broker" / f"tansu-{kport}.pid").read_text())
    rows = []
    engine = {"engine": {"allowed_lateness": "0s", "idle_timeout": "1s"}}

    # 1. serve
    g, h = port(), port()
    p, _ = start(["serve", "--grpc-listen", f"127.0.0.1:{g}", "--http-listen", f"127.0.0.1:{h}"], "serve", engine)
    ready(h, p)
    c0 = cpu(p.pid)
    r = loadgen(g, "--duration", f"{SECONDS}s")
    serve_rate = r["records_per_s"]
    rows.append(("serve", serve_rate, serve_rate, 1.0, f"serve {cpu(p.pid) - c0:.1f}s"))
    stop(p)

    # 2. ingest -> Kafka -> detect, 1..3 detectors
    for n in (1, 2, 3):
        events, state = f"bench-events-{n}", f"bench-state-{n}"
        for t in (events, state):
            subprocess.run([tansu, "topic", "create", t, "--partitions", "6", "--broker", f"tcp://{brokers}"],
                           check=True, capture_output=True)
        cfg = dict(engine, kafka={"brokers": brokers, "events_topic": events, "state_topic": state})
        g, h = port(), port()
        ing, _ = start(["ingest", "--grpc-listen", f"127.0.0.1:{g}", "--http-listen", f"127.0.0.1:{h}"],
                       f"ingest-{n}", cfg)
        dets = []
        for i in range(n):
            dh = port()
            d, _ = start(["detect", "--group", f"bench-{n}", "--http-listen", f"127.0.0.1:{dh}"],
                         f"detect-{n}-{i}", cfg)
            dets.append((d, dh))
        ready(h, ing)
        for d, dh in dets:
            ready(dh, d)
        time.sleep(3)  # the group settles
        cpus = {p.pid: cpu(p.pid) for p in [ing] + [d for d, _ in dets]}
        kcpu = cpu(broker_pid)
        t0 = time.time()
        r = loadgen(g, "--duration", f"{SECONDS}s")
        accepted = r["accepted"]
        deadline = time.time() + 300
        while sum(total(dh, "vigil_detect_events_total") for _, dh in dets) < accepted:
            if time.time() > deadline:
                break
            time.sleep(0.2)
        done = time.time() - t0
        through = sum(total(dh, "vigil_detect_events_total") for _, dh in dets) / done
        p50, p99 = hop([dh for _, dh in dets])
        use = [f"ingest {cpu(ing.pid) - cpus[ing.pid]:.1f}s"] + \
              [f"detect {cpu(d.pid) - cpus[d.pid]:.1f}s" for d, _ in dets] + [f"broker {cpu(broker_pid) - kcpu:.1f}s"]
        rows.append((f"ingest + {n} detect", r["records_per_s"], through, through / serve_rate,
                     ", ".join(use) + f"; hop p50 {p50:.0f} ms, p99 {p99:.0f} ms"))
        for d, _ in dets:
            stop(d)
        stop(ing)

    # 3. alert latency at RATE records/s
    lat = []
    g, h = port(), port()
    p, d = start(["serve", "--grpc-listen", f"127.0.0.1:{g}", "--http-listen", f"127.0.0.1:{h}"], "serve-lat", engine)
    ready(h, p)
    r = loadgen(g, "--duration", "15s", "--rate", str(RATE), "--probe-every", "100ms",
                "--probe-alerts", str(d / "alerts.jsonl"))
    lat.append(("serve", r))
    stop(p)
    for t in ("bench-events-lat", "bench-state-lat"):
        subprocess.run([tansu, "topic", "create", t, "--partitions", "6", "--broker", f"tcp://{brokers}"],
                       check=True, capture_output=True)
    cfg = dict(engine, kafka={"brokers": brokers, "events_topic": "bench-events-lat", "state_topic": "bench-state-lat"})
    g, h, dh = port(), port(), port()
    ing, _ = start(["ingest", "--grpc-listen", f"127.0.0.1:{g}", "--http-listen", f"127.0.0.1:{h}"], "ingest-lat", cfg)
    det, dd = start(["detect", "--group", "bench-lat", "--http-listen", f"127.0.0.1:{dh}"], "detect-lat", cfg)
    ready(h, ing)
    ready(dh, det)
    time.sleep(3)
    r = loadgen(g, "--duration", "15s", "--rate", str(RATE), "--probe-every", "100ms",
                "--probe-alerts", str(dd / "alerts.jsonl"))
    lat.append(("ingest + 1 detect", r))
    stop(det)
    stop(ing)

    print(f"\nscale-out bench, {SECONDS}s of loadgen at full speed (gRPC, batches of 1,000), tansu on the same 2 cores\n")
    print(f"{'setup':<20} {'ingest rec/s':>13} {'detected rec/s':>15} {'ratio':>6}  CPU seconds per process")
    for name, ing_rate, det_rate, ratio, note in rows:
        print(f"{name:<20} {ing_rate:>13,.0f} {det_rate:>15,.0f} {ratio:>6.2f}  {note}")
    print(f"\nalert latency at {RATE} records/s (send -> alerts.jsonl; allowed_lateness 0s, commit_interval 1s):")
    for name, r in lat:
        print(f"  {name:<20} p50 {r.get('alert_latency_p50_ms', float('nan')):.0f} ms, p99 {r.get('alert_latency_p99_ms', float('nan')):.0f} ms"
              f"  ({r.get('probes_seen', '?')} probes)")


try:
    main()
finally:
    for p in procs:
        if p.poll() is None:
            p.kill()
    subprocess.run([str(ROOT / "scripts" / "broker"), "stop", str(0)], env=ENV, capture_output=True)
    for f in (WORK / "broker").glob("tansu-*.pid"):
        subprocess.run([str(ROOT / "scripts" / "broker"), "stop", f.stem.split("-")[1]], env=ENV, capture_output=True)
    if not os.environ.get("BENCH_KEEP"):
        import shutil
        shutil.rmtree(WORK, ignore_errors=True)
