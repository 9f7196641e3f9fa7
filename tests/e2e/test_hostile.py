"""Hostile and broken input through the real receiver: each gets a clear answer,
the process stays up, and what was accepted before and after is intact."""
import math

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from conftest import duck, events_glob
from test_ingest import T0, json_logs, post


def request(attrs=(), time_ns=T0 * 10**9, body="claude_code.user_prompt", n=1, severity=9):
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    kv = rl.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "claude-code"
    sl = rl.scope_logs.add()
    for _ in range(n):
        rec = sl.log_records.add()
        rec.time_unix_nano = time_ns
        rec.severity_number = severity
        rec.body.string_value = body
        for k, v in attrs:
            a = rec.attributes.add()
            a.key = k
            if isinstance(v, float):
                a.value.double_value = v
            elif isinstance(v, bool):
                a.value.bool_value = v
            elif isinstance(v, int):
                a.value.int_value = v
            else:
                a.value.string_value = v
    return req.SerializeToString()


def test_hostile_records_are_handled_and_nothing_accepted_is_lost(vigil_factory):
    v = vigil_factory(config={"ingest": {"max_body_bytes": 16 << 20}})
    url = v.http + "/v1/logs"
    sent = {}

    def ok(name, body, records=1):
        status, resp, _ = post(url, body)
        assert status == 200, (name, status, resp[:200])
        sent[name] = records

    assert post(url, json_logs(3, "before@example.com"), "application/json")[0] == 200
    ok("big-attr", request([("user.email", "big@example.com"), ("blob", "x" * (1 << 20))]))
    ok("many-attrs", request([("user.email", "many@example.com")] + [(f"k{i}", f"v{i}") for i in range(100_000)]))
    ok("dup-keys", request([("user.email", "first@example.com"), ("user.email", "dup@example.com")]))
    ok("nan-inf", request([("user.email", "nan@example.com"), ("a", math.nan), ("b", math.inf), ("c", -math.inf)]))
    ok("zero-time", request([("user.email", "zero@example.com")], time_ns=0))
    ok("late-2262", request([("user.email", "y2262@example.com")], time_ns=9_223_372_036_854_775_000))
    ok("unknown-enum", request([("user.email", "sev@example.com")], severity=999))
    ok("empty", ExportLogsServiceRequest().SerializeToString(), 0)
    # Past what nanoseconds in an i64 can hold: refused through partial success, not dropped silently.
    status, resp, _ = post(url, request([("user.email", "never@example.com")], time_ns=2**64 - 1))
    assert status == 200
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
    partial = ExportLogsServiceResponse.FromString(resp).partial_success
    assert partial.rejected_log_records == 1 and "2262" in partial.error_message
    # Invalid UTF-8 in a string field (protobuf says strings are UTF-8): taken
    # with '?' for the bad byte rather than refused whole, which would let one
    # such string hide every record sent with it.
    bad = request([("user.email", "utf8@example.com"), ("cmd", "cat ~/.aws/credentials")])
    bad = bad.replace(b"utf8@example.com", b"utf8@exampl\xff.com")
    status, resp, _ = post(url, bad)
    assert status == 200, resp
    # A lone surrogate escape in OTLP/JSON (a JavaScript exporter cutting an emoji): U+FFFD.
    cut = json_logs(1, "cut@example.com").replace(b"cut@example.com", b"cut\\ud83d@example.com")
    assert post(url, cut, "application/json")[0] == 200
    assert post(url, json_logs(2, "after@example.com"), "application/json")[0] == 200
    assert v.stop() == 0, v.log()

    rows = {r[0]: r[1:] for r in duck(
        f"select user, count(*), max(epoch_ns(time)), max(length(attrs['blob'])), max(cardinality(attrs)), "
        f"max(attrs['a']), max(attrs['b']) from read_parquet('{events_glob(v)}') group by user")}
    assert rows["before@example.com"][0] == 3 and rows["after@example.com"][0] == 2
    assert rows["big@example.com"][2] == 1 << 20
    assert rows["many@example.com"][3] >= 100_000
    assert "dup@example.com" in rows and "first@example.com" not in rows
    assert rows["nan@example.com"][4:6] == ("NaN", "inf")
    assert rows["zero@example.com"][1] > T0 * 10**9, "a zero time takes the time vigil received it"
    # Two centuries ahead of vigil's clock: moved back to the receipt, the sent time kept.
    assert T0 * 10**9 < rows["y2262@example.com"][1] < 9_223_372_036_854_775_000
    (sent,) = duck(f"select attrs['vigil.sender_time'] from read_parquet('{events_glob(v)}') "
                   "where \"user\" = 'y2262@example.com'")[0]
    assert sent.startswith("2262-04-11"), sent
    assert "sev@example.com" in rows
    assert "never@example.com" not in rows and None not in rows
    assert "utf8@exampl?.com" in rows, rows.keys()
    assert "cut\ufffd@example.com" in rows, rows.keys()
