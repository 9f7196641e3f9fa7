"""OTLP/JSON exporters for the real OpenTelemetry Python SDK, which ships only
protobuf ones: what an `OTEL_EXPORTER_OTLP_PROTOCOL=http/json` agent, Portkey
or Cloudflare's AI gateway send. The SDK's records are encoded by its own OTLP
encoder and written in the OTLP JSON mapping: lowerCamelCase keys, enums as
numbers, 64-bit integers as strings, trace and span ids in hex."""
import base64
import importlib.util
import json
import urllib.error
import urllib.request

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

IDS = ("traceId", "spanId", "parentSpanId")


def to_json(request):
    """An OTLP protobuf message as its OTLP/JSON body."""
    def hex_ids(node):
        if isinstance(node, dict):
            return {k: base64.b64decode(v).hex() if k in IDS else hex_ids(v) for k, v in node.items()}
        return [hex_ids(x) for x in node] if isinstance(node, list) else node
    return json.dumps(hex_ids(json_format.MessageToDict(request, use_integers_for_enums=True))).encode()


def post_json(url, body, headers=None):
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class JsonLogExporter(LogRecordExporter):
    def __init__(self, url, headers=None):
        self.url, self.headers = url, headers

    def export(self, batch):
        status, _ = post_json(self.url, to_json(encode_logs(batch)), self.headers)
        return LogRecordExportResult.SUCCESS if status == 200 else LogRecordExportResult.FAILURE

    def shutdown(self):
        pass

    def force_flush(self, timeout_millis=30000):
        return True


class JsonSpanExporter(SpanExporter):
    def __init__(self, url, headers=None):
        self.url, self.headers = url, headers

    def export(self, spans):
        status, _ = post_json(self.url, to_json(encode_spans(spans)), self.headers)
        return SpanExportResult.SUCCESS if status == 200 else SpanExportResult.FAILURE


def exporters(endpoint, protocol, headers):
    base = endpoint.rstrip("/")
    return JsonLogExporter(base + "/v1/logs", headers), JsonSpanExporter(base + "/v1/traces", headers)


def send_scenario(paths, endpoint):
    """Sends scenario files as send.py does (the same SDK calls, records and
    order), through the OTLP/JSON exporters above."""
    from conftest import scenario_dir
    spec = importlib.util.spec_from_file_location("scenario_send", scenario_dir() / "send.py")
    send = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(send)
    send.exporters = exporters
    for path in paths:
        send.send(json.loads(path.read_text()), endpoint, "http-json", {})
