"""The memory limiter: above its soft limit vigil refuses new data with the
retryable answers OTLP exporters understand (HTTP 429 + Retry-After, gRPC
RESOURCE_EXHAUSTED), keeps nothing half-accepted, and says so in /metrics.
(Falling back under the limit is the unit test's and scripts/soak's part.)"""
import urllib.error
import urllib.request

from test_ingest import json_logs


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
