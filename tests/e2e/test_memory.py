"""The memory limiter: above its soft limit vigil refuses new data with the
retryable answers OTLP exporters understand (HTTP 429 + Retry-After, gRPC
RESOURCE_EXHAUSTED), keeps nothing half-accepted, and says so in /metrics.
(Falling back under the limit is the unit test's and scripts/soak's part.)
And the engine's lateness buffer keeps to its own budget, engine.max_buffered_mib."""
import json
import os
import subprocess
import time
import urllib.error
import urllib.request

from conftest import HEAVY, VIGIL_BIN
from test_ingest import T0, json_logs

pytestmark = HEAVY


def test_over_the_memory_limit_senders_are_told_to_retry(vigil_factory):
    # A limit far below what any process needs: vigil is over it from the first sample.
    v = vigil_factory(args=["--memory-limit-mib", "2"])
    req = urllib.request.Request(v.http + "/v1/logs", data=json_logs(3, "mem@example.com"), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=30)
        raise AssertionError("accepted above the memory limit")
    except urllib.error.HTTPError as e:
        assert e.code == 429, e.code
        assert e.headers.get("Retry-After") == "1"
        assert "memory soft limit" in e.read().decode()

    import grpc
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
    from opentelemetry.proto.logs.v1 import logs_pb2

    request = logs_service_pb2.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(
        scope_logs=[logs_pb2.ScopeLogs(log_records=[logs_pb2.LogRecord(time_unix_nano=1)])])])
    with grpc.insecure_channel(f"127.0.0.1:{v.grpc_port}") as channel:
        stub = logs_service_pb2_grpc.LogsServiceStub(channel)
        try:
            stub.Export(request, timeout=30)
            raise AssertionError("accepted above the memory limit")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
            assert "memory soft limit" in e.details()

    metrics = v.metrics()
    limit = [l for l in metrics.splitlines() if l.startswith("vigil_memory_limit_bytes ")]
    assert limit == [f"vigil_memory_limit_bytes {2 << 20}"], limit
    assert "vigil_memory_over_soft_limit 1" in metrics
    refused = [l for l in metrics.splitlines() if l.startswith("vigil_memory_refused_requests ")]
    assert refused and int(refused[0].split()[1]) >= 2, refused
    assert 'status="memory_limited"' in metrics
    rss = [l for l in metrics.splitlines() if l.startswith("vigil_memory_rss_bytes ")]
    assert rss and int(rss[0].split()[1]) > 2 << 20, rss
    assert v.stop() == 0, v.log()
    assert "memory above the soft limit" in v.log()
    assert not list((v.archive / "events").rglob("*.parquet")), "nothing may be archived"


def _metric(text, name):
    lines = [l for l in text.splitlines() if l.startswith(name + " ")]
    return int(float(lines[0].split()[1])) if lines else None


def test_the_lateness_buffer_stays_within_its_memory_budget(vigil_factory):
    # An hour of allowed lateness (and no idle release) would hold every event
    # below until the end; a 1 MiB budget makes the engine run the oldest
    # early instead, and none is lost.
    v = vigil_factory(config={"engine": {"allowed_lateness": "1h", "idle_timeout": "1h", "max_buffered_mib": 1}})
    users = [f"budget{i:03}@example.com" for i in range(120)]
    records = [{
        "timeUnixNano": str(int((T0 + i) * 1e9)),
        "body": {"stringValue": "claude_code.tool_result"},
        "attributes": [{"key": k, "value": {"stringValue": s}} for k, s in [
            ("event.name", "tool_result"), ("session.id", f"s-{i}"), ("user.email", u),
            ("tool_name", "Read"), ("success", "true"),
            # ~30 KB paths: 120 held events would take about 3.6 MB.
            ("tool_parameters", json.dumps({"file_path": f"/home/{i}/{'d' * 30000}/.ssh/id_ed25519"}))]],
    } for i, u in enumerate(users)]
    body = json.dumps({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "claude-code"}}]},
        "scopeLogs": [{"logRecords": records[j:j + 10]}]} for j in range(0, len(records), 10)]}).encode()
    req = urllib.request.Request(v.http + "/v1/logs", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    assert urllib.request.urlopen(req, timeout=30).status == 200

    deadline = time.time() + 30
    while time.time() < deadline:
        m = v.metrics()
        if (_metric(m, "vigil_engine_forced_releases") or 0) >= 1:
            break
        time.sleep(0.2)
    held_bytes = _metric(m, "vigil_engine_buffered_bytes")
    held = _metric(m, "vigil_engine_buffered_events")
    assert _metric(m, "vigil_engine_forced_releases") >= 1, m
    assert 0 < held_bytes <= 1 << 20, held_bytes
    assert 0 < held < len(users), held
    # The oldest were run early: their alerts are out before the lateness passed.
    early = v.wait_alerts(until=lambda a: len(a) >= len(users) - held)
    assert {a["user"] for a in early} <= set(users[:len(users) - held + 1]), sorted(a["user"] for a in early)
    assert v.stop() == 0, v.log()
    fired = [a for a in v.alerts() if a["rule_id"] == "sensitive-file-read"]
    assert sorted(a["user"] for a in fired) == users


def test_the_binary_carries_its_allocator_options():
    # Larger per-thread caches of freed blocks (src/main.rs, MALLOC_CONF): events
    # cross threads, and jemalloc's default of 200 blocks per size class made
    # every thread take arena locks far more often. jemalloc prints the options
    # it runs with when asked to, through the environment.
    out = subprocess.run([VIGIL_BIN, "--version"], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "_RJEM_MALLOC_CONF": "stats_print:true"})
    assert out.returncode == 0, out.stderr
    options = dict(line.strip().split(": ", 1) for line in (out.stdout + out.stderr).splitlines()
                   if line.strip().startswith("opt.") and ": " in line)
    assert options.get("opt.tcache_nslots_small_max") == "2000", options
    assert options.get("opt.lg_tcache_nslots_mul") == "2", options
