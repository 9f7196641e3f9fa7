#!/usr/bin/env python3
"""Seed corpora for vigil's fuzz targets, from real shapes.

Converts the records of the scenario files (shared/scenarios/*.json, the
shapes Claude Code, MCP and AI gateways and endpoint agents really send) into
OTLP/JSON and OTLP/protobuf export requests, capture files and
tool_parameters strings, and copies the default mapping and rule files:

  fuzz/corpus/otlp_json/       OTLP/JSON request bodies (logs, traces, metrics)
  fuzz/corpus/otlp_proto/      the same requests as protobuf
  fuzz/corpus/otlp_capture/    vigil capture files holding those requests
  fuzz/corpus/tool_parameters/ Claude Code tool_parameters JSON strings
  fuzz/corpus/mapping_file/    ingest/mappings/*.yaml
  fuzz/corpus/rule_file/       rules/default/*.yaml

Only the standard library: the protobuf is encoded by hand (the few OTLP
messages needed). Idempotent; files are named by content hash.

  python3 fuzz/make_seeds.py [--scenarios DIR] [--samples]

--samples also rewrites fuzz/src/samples/*.json, the fixed requests the
mapping_file target normalizes with each mapping set it compiles.
"""
import argparse
import glob
import hashlib
import json
import os
import re
import struct
import sys
from datetime import datetime, timezone

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)

# ---------------------------------------------------------------- scenarios

_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_offset(text):
    text = text.strip()
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", body)
    return sign * sum(float(n) * _UNIT[u] for n, u in parts)


def records(path):
    """(record, event time ns) of a scenario, repeats expanded (at most 3 each)."""
    with open(path) as f:
        sc = json.load(f)
    base = datetime.fromisoformat(sc["base_time"].replace("Z", "+00:00")).astimezone(timezone.utc).timestamp()
    out = []
    for rec in sc["records"]:
        step = parse_offset(rec.get("every", "0s"))
        for i in range(min(int(rec.get("repeat", 1)), 3)):
            t = base + parse_offset(rec.get("at", "+0s")) + i * step
            out.append((rec, int(t * 1e9)))
    return sc["name"], out


# ---------------------------------------------------------------- OTLP/JSON

def any_json(v):
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, (list, tuple)):
        return {"arrayValue": {"values": [any_json(x) for x in v]}}
    if isinstance(v, dict):
        return {"kvlistValue": {"values": attrs_json(v)}}
    if v is None:
        return {}
    return {"stringValue": str(v)}


def attrs_json(d):
    return [{"key": k, "value": any_json(v)} for k, v in d.items()]


def ident(seed, n):
    return hashlib.sha256(seed.encode()).hexdigest()[: 2 * n]


_KIND = {"internal": 1, "server": 2, "client": 3}


def log_json(rec, t):
    out = {"timeUnixNano": str(t), "observedTimeUnixNano": str(t),
           "severityNumber": 9, "severityText": rec.get("severity", "INFO"),
           "attributes": attrs_json(rec.get("attributes", {}))}
    if rec.get("body") is not None:
        out["body"] = any_json(rec["body"])
    return out


def span_json(rec, t, i):
    end = t + int(float(rec.get("duration_ms", 10)) * 1e6)
    out = {"traceId": ident(f"t{t}{i}", 16), "spanId": ident(f"s{t}{i}", 8),
           "name": rec["name"], "kind": _KIND[rec.get("kind", "internal")],
           "startTimeUnixNano": str(t), "endTimeUnixNano": str(end),
           "attributes": attrs_json(rec.get("attributes", {}))}
    if rec.get("status") == "error":
        out["status"] = {"code": 2, "message": rec.get("status_message", "")}
    return out


def requests(recs):
    """OTLP/JSON export requests for a list of (record, time): one per signal, grouped by resource."""
    logs, spans = {}, {}
    for i, (rec, t) in enumerate(recs):
        key = json.dumps(rec.get("resource", {}), sort_keys=True)
        if rec["signal"] == "log":
            logs.setdefault(key, []).append(log_json(rec, t))
        else:
            spans.setdefault(key, []).append(span_json(rec, t, i))
    out = []
    if logs:
        out.append({"resourceLogs": [
            {"resource": {"attributes": attrs_json(json.loads(k))},
             "scopeLogs": [{"scope": {"name": "com.anthropic.claude_code", "version": "2.1.230"},
                            "logRecords": v}]} for k, v in logs.items()]})
    if spans:
        out.append({"resourceSpans": [
            {"resource": {"attributes": attrs_json(json.loads(k))},
             "scopeSpans": [{"scope": {"name": "scenario"}, "spans": v}]} for k, v in spans.items()]})
    return out


def metrics_request(t):
    """Claude Code's metrics: a token-usage sum, a cost sum, a gauge and a histogram."""
    res = {"attributes": attrs_json({"service.name": "claude-code", "service.version": "2.1.230"})}
    common = {"session.id": "sess-metrics", "user.email": "metrics@example.com",
              "organization.id": "5f0c1e9a-8d2b-4c1f-9a77-2b8e4d1c0a11"}

    def point(value, extra):
        p = {"timeUnixNano": str(t), "startTimeUnixNano": str(t - 60_000_000_000),
             "attributes": attrs_json({**common, **extra})}
        p["asInt" if isinstance(value, int) else "asDouble"] = str(value) if isinstance(value, int) else value
        return p
    return {"resourceMetrics": [{"resource": res, "scopeMetrics": [{
        "scope": {"name": "com.anthropic.claude_code"},
        "metrics": [
            {"name": "claude_code.token.usage", "unit": "tokens",
             "sum": {"aggregationTemporality": 1, "isMonotonic": True, "dataPoints": [
                 point(15000, {"type": "input", "model": "claude-sonnet-4-5"}),
                 point(2200, {"type": "output", "model": "claude-sonnet-4-5"})]}},
            {"name": "claude_code.cost.usage", "unit": "USD",
             "sum": {"aggregationTemporality": 1, "isMonotonic": True, "dataPoints": [
                 point(0.42, {"model": "claude-sonnet-4-5"})]}},
            {"name": "claude_code.session.count", "gauge": {"dataPoints": [point(1, {})]}},
            {"name": "claude_code.active_time.total", "unit": "s", "histogram": {
                "aggregationTemporality": 1, "dataPoints": [{
                    "timeUnixNano": str(t), "count": "3", "sum": 12.5,
                    "bucketCounts": ["1", "2"], "explicitBounds": [5.0],
                    "attributes": attrs_json(common)}]}},
        ]}]}]}


# ---------------------------------------------------------- OTLP/protobuf

def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def tag(field, wire):
    return varint(field << 3 | wire)


def f_varint(field, n):
    return tag(field, 0) + varint(n)


def f_fixed64(field, n):
    return tag(field, 1) + struct.pack("<Q", n & ((1 << 64) - 1))


def f_double(field, x):
    return tag(field, 1) + struct.pack("<d", x)


def f_fixed32(field, n):
    return tag(field, 5) + struct.pack("<I", n)


def f_bytes(field, b):
    if isinstance(b, str):
        b = b.encode()
    return tag(field, 2) + varint(len(b)) + b


def pb_any(j):
    """AnyValue from its OTLP/JSON form."""
    if "stringValue" in j:
        return f_bytes(1, j["stringValue"])
    if "boolValue" in j:
        return f_varint(2, int(j["boolValue"]))
    if "intValue" in j:
        return f_varint(3, int(j["intValue"]))
    if "doubleValue" in j:
        return f_double(4, j["doubleValue"])
    if "arrayValue" in j:
        return f_bytes(5, b"".join(f_bytes(1, pb_any(v)) for v in j["arrayValue"]["values"]))
    if "kvlistValue" in j:
        return f_bytes(6, b"".join(f_bytes(1, pb_kv(kv)) for kv in j["kvlistValue"]["values"]))
    return b""


def pb_kv(kv):
    return f_bytes(1, kv["key"]) + f_bytes(2, pb_any(kv["value"]))


def pb_attrs(field, attrs):
    return b"".join(f_bytes(field, pb_kv(kv)) for kv in attrs)


def pb_resource(r):
    return pb_attrs(1, r.get("attributes", []))


def pb_scope(s):
    out = f_bytes(1, s["name"]) if s.get("name") else b""
    return out + (f_bytes(2, s["version"]) if s.get("version") else b"")


def pb_log(l):
    out = f_fixed64(1, int(l.get("timeUnixNano", 0))) + f_varint(2, l.get("severityNumber", 0))
    out += f_bytes(3, l.get("severityText", ""))
    if "body" in l:
        out += f_bytes(5, pb_any(l["body"]))
    out += pb_attrs(6, l.get("attributes", []))
    return out + f_fixed64(11, int(l.get("observedTimeUnixNano", 0)))


def pb_span(s):
    out = f_bytes(1, bytes.fromhex(s["traceId"])) + f_bytes(2, bytes.fromhex(s["spanId"]))
    out += f_bytes(5, s["name"]) + f_varint(6, s["kind"])
    out += f_fixed64(7, int(s["startTimeUnixNano"])) + f_fixed64(8, int(s["endTimeUnixNano"]))
    out += pb_attrs(9, s["attributes"])
    if "status" in s:
        out += f_bytes(15, f_bytes(2, s["status"]["message"]) + f_varint(3, s["status"]["code"]))
    return out


def pb_number_point(p):
    out = pb_attrs(7, p["attributes"]) + f_fixed64(2, int(p["startTimeUnixNano"]))
    out += f_fixed64(3, int(p["timeUnixNano"]))
    if "asInt" in p:
        return out + tag(6, 1) + struct.pack("<q", int(p["asInt"]))
    return out + f_double(4, p["asDouble"])


def pb_metric(m):
    out = f_bytes(1, m["name"]) + (f_bytes(3, m["unit"]) if m.get("unit") else b"")
    if "gauge" in m:
        out += f_bytes(5, b"".join(f_bytes(1, pb_number_point(p)) for p in m["gauge"]["dataPoints"]))
    if "sum" in m:
        s = m["sum"]
        body = b"".join(f_bytes(1, pb_number_point(p)) for p in s["dataPoints"])
        out += f_bytes(7, body + f_varint(2, s["aggregationTemporality"]) + f_varint(3, int(s["isMonotonic"])))
    if "histogram" in m:
        h = m["histogram"]
        pts = b""
        for p in h["dataPoints"]:
            pb = pb_attrs(9, p["attributes"]) + f_fixed64(3, int(p["timeUnixNano"]))
            pb += f_fixed64(4, int(p["count"])) + f_double(5, p["sum"])
            pb += f_bytes(6, b"".join(struct.pack("<Q", int(c)) for c in p["bucketCounts"]))
            pb += f_bytes(7, b"".join(struct.pack("<d", b) for b in p["explicitBounds"]))
            pts += f_bytes(1, pb)
        out += f_bytes(9, pts + f_varint(2, h["aggregationTemporality"]))
    return out


def to_protobuf(req):
    """(signal number as in capture files, protobuf bytes) of an OTLP/JSON request."""
    if "resourceLogs" in req:
        return 1, b"".join(f_bytes(1, f_bytes(1, pb_resource(rl.get("resource", {}))) + b"".join(
            f_bytes(2, f_bytes(1, pb_scope(sl.get("scope", {}))) + b"".join(f_bytes(2, pb_log(l)) for l in sl["logRecords"]))
            for sl in rl["scopeLogs"])) for rl in req["resourceLogs"])
    if "resourceSpans" in req:
        return 2, b"".join(f_bytes(1, f_bytes(1, pb_resource(rs["resource"])) + b"".join(
            f_bytes(2, f_bytes(1, pb_scope(ss["scope"])) + b"".join(f_bytes(2, pb_span(s)) for s in ss["spans"]))
            for ss in rs["scopeSpans"])) for rs in req["resourceSpans"])
    return 3, b"".join(f_bytes(1, f_bytes(1, pb_resource(rm["resource"])) + b"".join(
        f_bytes(2, f_bytes(1, pb_scope(sm["scope"])) + b"".join(f_bytes(2, pb_metric(m)) for m in sm["metrics"]))
        for sm in rm["scopeMetrics"])) for rm in req["resourceMetrics"])


def capture_file(items):
    """A vigil capture file (ingest/src/capture.rs) holding (signal, protobuf) records."""
    out = bytearray(b"VIGILCAP1\n")
    for i, (signal, body) in enumerate(items):
        tenant = b"acme" if i % 2 == 0 else b""
        out += bytes([signal]) + struct.pack("<H", len(tenant)) + tenant
        out += struct.pack("<q", 1_773_151_200_000_000_000 + i) + struct.pack("<I", len(body)) + body
    return bytes(out)


# ---------------------------------------------------------------- writing

def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(FUZZ, "corpus", target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", default=os.path.join(ROOT, "..", "shared", "scenarios"))
    ap.add_argument("--samples", action="store_true")
    args = ap.parse_args()

    files = sorted(glob.glob(os.path.join(args.scenarios, "*.json")))
    reqs, params = [], set()
    for path in files:
        _, recs = records(path)
        reqs += requests(recs)                    # one request per signal per scenario
        for i in range(0, len(recs), 7):          # and a few small ones
            reqs += requests(recs[i:i + 2])
        for rec, _ in recs:
            p = rec.get("attributes", {}).get("tool_parameters")
            if isinstance(p, str):
                params.add(p)
    t0 = 1_773_151_200_000_000_000
    reqs.append(metrics_request(t0))
    reqs += [{}, {"resourceLogs": []}, {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "hello"}}]}]}]}]

    for r in reqs:
        body = json.dumps(r, separators=(",", ":"))
        write("otlp_json", body)
        write("otlp_proto", to_protobuf(r)[1] if r else b"")
    pbs = [to_protobuf(r) for r in reqs if r]
    for i in range(0, len(pbs), 5):
        write("otlp_capture", capture_file(pbs[i:i + 5]))
    write("otlp_capture", capture_file([]))
    for p in sorted(params) + ['{"file_path":"/etc/passwd"}', '{"command":"ls","timeout":120000,"dangerouslyDisableSandbox":true}']:
        write("tool_parameters", p)
    for f in sorted(glob.glob(os.path.join(ROOT, "ingest", "mappings", "*.yaml"))):
        write("mapping_file", open(f, "rb").read())
    for f in sorted(glob.glob(os.path.join(ROOT, "rules", "default", "*.yaml"))):
        write("rule_file", open(f, "rb").read())

    if args.samples:
        # One request of each signal, every source mixed in.
        allrecs = []
        for path in files:
            allrecs += records(path)[1][:6]
        logs, traces = requests(allrecs)
        samples = os.path.join(FUZZ, "src", "samples")
        os.makedirs(samples, exist_ok=True)
        for name, r in (("logs", logs), ("traces", traces), ("metrics", metrics_request(t0))):
            with open(os.path.join(samples, name + ".json"), "w") as f:
                json.dump(r, f, indent=1)
                f.write("\n")
    print(f"seeds from {len(files)} scenarios: {len(reqs)} requests, {len(params)} tool_parameters",
          file=sys.stderr)


if __name__ == "__main__":
    main()
