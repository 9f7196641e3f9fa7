"""Alerts to Kafka, read back by a real consumer group (confluent-kafka) from a
real Kafka-protocol broker (tansu, started per test by scripts/broker on a free
loopback port): the right keys, headers and JSON; nothing lost or doubled while
the broker is away or vigil is killed; bad settings fail fast or show on /readyz."""
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import ROOT, VIGIL_BIN, free_port, scenario_dir, send_scenario

BROKER = ROOT / "scripts" / "broker"
TOPIC = "vigil.alerts"
# Scenarios that need no config of their own, so one vigil can take them all.
SCENARIOS = ["sensitive-file-read.json", "scheduled-task-created.json", "bypass-permissions-enabled.json"]
HEADERS = ("alert_id", "rule_id", "severity", "tenant", "schema_version")

confluent_kafka = pytest.importorskip("confluent_kafka")


def tansu_path():
    out = subprocess.run([str(BROKER), "path"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


class Broker:
    """One tansu on 127.0.0.1:port, started and stopped through scripts/broker."""

    def __init__(self, run_dir):
        self.port = free_port()
        self.env = dict(os.environ, VIGIL_BROKER_RUN=str(run_dir))

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        # The port was free when chosen; on a shared machine another process can
        # take it first, and then a new one is chosen.
        for _ in range(5):
            out = subprocess.run([str(BROKER), "start", str(self.port), TOPIC],
                                 capture_output=True, text=True, env=self.env, timeout=60)
            if out.returncode == 0 or "in use" not in out.stdout + out.stderr:
                break
            self.port = free_port()
        assert out.returncode == 0, f"scripts/broker start failed:\n{out.stdout}\n{out.stderr}"

    def stop(self):
        subprocess.run([str(BROKER), "stop", str(self.port)], env=self.env, timeout=30, check=True)


@pytest.fixture
def broker(tmp_path):
    if not tansu_path().exists():
        pytest.skip("tansu is not installed; run scripts/broker install (scripts/setup does)")
    b = Broker(tmp_path / "broker")
    yield b
    b.stop()


def kafka_args(b):
    return ["--kafka-brokers", b.bootstrap, "--kafka-topic", TOPIC]


def readyz(v):
    """(status, body) of /readyz, or None while nothing answers."""
    try:
        with urllib.request.urlopen(v.http + "/readyz", timeout=2) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def wait_answering(v, timeout=30):
    """Waits until vigil's HTTP side answers (ready or not) and returns /readyz."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert v.alive(), f"vigil exited with {v.proc.returncode}:\n{v.log()}"
        r = readyz(v)
        if r is not None:
            return r
        time.sleep(0.1)
    raise AssertionError(f"vigil did not answer within {timeout}s:\n{v.log()}")


def wait_readyz(v, status, timeout=30):
    deadline = time.time() + timeout
    r = None
    while time.time() < deadline:
        assert v.alive(), f"vigil exited with {v.proc.returncode}:\n{v.log()}"
        r = readyz(v)
        if r is not None and r[0] == status:
            return r
        time.sleep(0.2)
    raise AssertionError(f"/readyz stayed {r}, wanted {status}:\n{v.log()}")


def send(v):
    # One hour apart in event time: a story sent after another that ended later
    # would otherwise arrive behind the watermark and count as late.
    for i, name in enumerate(SCENARIOS):
        send_scenario([scenario_dir() / name], v.http, extra=["--base-time", f"2026-03-10T{15 + i}:00:00Z"])


def expected_key(alert):
    return "/".join([alert["tenant"], *(f"{k}={val}" for k, val in sorted(alert["key"].items()))])


def consume(b, n, timeout=60, linger=3.0):
    """Reads the topic from the start as a new consumer group until n messages
    came, then `linger` seconds more so that a duplicate would show."""
    c = confluent_kafka.Consumer({
        "bootstrap.servers": b.bootstrap,
        "group.id": f"soc-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    c.subscribe([TOPIC])
    got = []
    deadline = time.time() + timeout
    linger_until = None
    try:
        while time.time() < deadline:
            if len(got) >= n:
                linger_until = linger_until or time.time() + linger
                if time.time() >= linger_until:
                    break
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == confluent_kafka.KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(f"consumer error: {m.error()}")
            got.append({
                "key": m.key().decode(),
                "headers": {k: v.decode() for k, v in (m.headers() or [])},
                "alert": json.loads(m.value()),
                "partition": m.partition(),
            })
    finally:
        c.close()
    return got


def assert_exactly_once_in_order(alerts, got):
    ids = [g["alert"]["id"] for g in got]
    assert sorted(ids) == sorted(a["id"] for a in alerts), f"topic: {ids}\njsonl: {[a['id'] for a in alerts]}"
    for key in {expected_key(a) for a in alerts}:
        want = [a["id"] for a in alerts if expected_key(a) == key]
        assert [g["alert"]["id"] for g in got if g["key"] == key] == want, f"order of {key}"


def test_scenario_alerts_arrive_on_the_topic_with_key_headers_and_alert_json(vigil_factory, broker):
    broker.start()
    v = vigil_factory(args=kafka_args(broker))
    send(v)
    alerts = v.wait_alerts(until=lambda a: len(a) >= 5)
    assert len(alerts) >= 5, v.log()
    got = consume(broker, len(alerts))
    assert_exactly_once_in_order(alerts, got)
    by_id = {a["id"]: a for a in alerts}
    for g in got:
        a = by_id[g["alert"]["id"]]
        assert g["alert"] == a, "the message value is the alert JSON of alerts.jsonl"
        assert g["key"] == expected_key(a)
        assert g["headers"] == {
            "alert_id": a["id"], "rule_id": a["rule_id"], "severity": a["severity"],
            "tenant": a["tenant"], "schema_version": str(a["schema_version"]),
        }
    # One subject's alerts share a partition.
    partitions = {}
    for g in got:
        partitions.setdefault(g["key"], set()).add(g["partition"])
    assert all(len(p) == 1 for p in partitions.values()), partitions
    metrics = v.metrics()
    assert "vigil_kafka_" in metrics
    assert v.stop() == 0, v.log()


def test_alerts_fired_while_the_broker_is_down_arrive_once_in_order_when_it_starts(vigil_factory, broker):
    v = vigil_factory(args=kafka_args(broker), start=False).start(wait_ready=False)
    status, body = wait_answering(v)
    assert status == 503 and "kafka" in body.lower(), (status, body)
    send(v)  # ingest answers 200 although the broker is down
    alerts = v.wait_alerts(until=lambda a: len(a) >= 5)
    assert len(alerts) >= 5, v.log()
    assert readyz(v)[0] == 503
    broker.start()
    wait_readyz(v, 200, timeout=60)
    got = consume(broker, len(alerts))
    assert_exactly_once_in_order(alerts, got)
    assert v.stop() == 0, v.log()
    assert list(v.archive.glob("alerts/**/*.parquet")), "alerts still reach the Parquet archive"


def test_alerts_spooled_when_vigil_is_killed_are_delivered_after_restart(vigil_factory, broker):
    v1 = vigil_factory(args=kafka_args(broker), start=False).start(wait_ready=False)
    wait_answering(v1)
    send(v1)
    alerts = v1.wait_alerts(until=lambda a: len(a) >= 5)
    assert len(alerts) >= 5, v1.log()
    spool = v1.data_dir / "spool" / "kafka"
    assert spool.is_dir() and any(spool.iterdir()), "alerts wait in DATA_DIR/spool/kafka"
    v1.stop(sig=signal.SIGKILL)
    broker.start()
    # Same data dir: the restarted vigil finds the spool and sends it.
    v2 = vigil_factory(args=kafka_args(broker), name="vigil")
    got = consume(broker, len(alerts))
    assert_exactly_once_in_order(alerts, got)
    assert v2.stop() == 0, v2.log()


def test_unknown_librdkafka_property_makes_serve_exit_at_once_naming_it(vigil_factory):
    cfg = {"kafka": {"brokers": "127.0.0.1:9", "topic": TOPIC, "properties": {"no.such.property": "1"}}}
    v = vigil_factory(config=cfg, start=False).start(wait_ready=False)
    try:
        rc = v.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"vigil kept running with an unknown librdkafka property:\n{v.log()}")
    assert rc != 0
    assert "no.such.property" in v.log(), v.log()


def test_unreachable_broker_host_gives_a_running_vigil_that_is_not_ready(vigil_factory):
    port = free_port()  # nothing listens there
    v = vigil_factory(args=["--kafka-brokers", f"127.0.0.1:{port}"], start=False).start(wait_ready=False)
    status, body = wait_answering(v, timeout=15)
    assert status == 503 and "kafka" in body.lower(), (status, body)
    send(v)
    assert len(v.wait_alerts(until=lambda a: len(a) >= 5)) >= 5, v.log()
    started = time.time()
    assert v.stop() == 0, v.log()
    assert time.time() - started < 30
    # librdkafka reports the dead broker on every reconnect, several times a
    # second; the log has each kind of error once a minute, not every report.
    log = v.log_path.read_text(errors="replace")
    down = [line for line in log.splitlines() if "brokers are down" in line]
    assert 1 <= len(down) <= 2, "\n".join(down)


def replay_to(v, out, *kafka):
    return subprocess.run([VIGIL_BIN, "replay", "--archive", str(v.archive), "--config", str(v.data_dir / "vigil.yaml"),
                           "--out", str(out), *kafka], capture_output=True, text=True, timeout=180)


def test_replayed_alerts_go_to_the_topic_marked_replayed(vigil_factory, broker, tmp_path):
    # A live run without Kafka, then its archive replayed onto the topic, as
    # a detection engineer would publish a new rule's findings over history.
    broker.start()
    v = vigil_factory()
    send(v)
    live = v.wait_alerts(until=lambda a: len(a) >= 5)
    assert v.stop() == 0, v.log()
    out = tmp_path / "replayed.jsonl"
    run = replay_to(v, out, "--kafka-brokers", broker.bootstrap, "--kafka-topic", TOPIC)
    assert run.returncode == 0, run.stderr
    replayed = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(a["id"] for a in replayed) == sorted(a["id"] for a in live)
    assert f"published {len(replayed)} alerts to kafka topic {TOPIC} at {broker.bootstrap}" in run.stderr, run.stderr
    got = consume(broker, len(replayed))
    assert_exactly_once_in_order(replayed, got)
    by_id = {a["id"]: a for a in replayed}
    for g in got:
        a = by_id[g["alert"]["id"]]
        assert g["alert"] == a and a["replayed"] is True
        assert g["key"] == expected_key(a)
        assert g["headers"]["alert_id"] == a["id"] and g["headers"]["rule_id"] == a["rule_id"]
    # Serve's own spool is not where the replay's went.
    assert not (v.data_dir / "spool").exists()


def test_replay_to_an_unreachable_broker_fails_naming_what_was_not_delivered(vigil_factory, tmp_path):
    v = vigil_factory()
    send_scenario([scenario_dir() / SCENARIOS[0]], v.http)
    live = v.wait_alerts(until=lambda a: len(a) >= 2)
    assert v.stop() == 0, v.log()
    out = tmp_path / "replayed.jsonl"
    port = free_port()  # nothing listens there
    run = replay_to(v, out, "--kafka-brokers", f"127.0.0.1:{port}", "--kafka-timeout", "3s")
    assert run.returncode == 2, run.stderr
    assert f"{len(live)} of {len(live)} replayed alerts were not acknowledged by kafka topic {TOPIC}" in run.stderr, run.stderr
    # The alerts file is written all the same.
    assert len(out.read_text().splitlines()) == len(live)
    # A topic without a broker is a usage error.
    run = replay_to(v, out, "--kafka-topic", "elsewhere")
    assert run.returncode == 2 and "--kafka-brokers" in run.stderr, run.stderr
