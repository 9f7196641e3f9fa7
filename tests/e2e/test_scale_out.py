"""Scale-out on Kafka: `vigil ingest` nodes publish normalized events to the
event topic, a consumer group of `vigil detect` nodes runs the rules per
partition and publishes alerts; the result equals one `vigil serve`, also
when a detector is killed mid-scenario or joins late.

Everything runs against a real broker (tansu, started by scripts/broker) and
the alerts are read from the topic with a real consumer, as a SOC would.
Comparisons with `vigil serve` are field by field except ids: the OTel SDK
gives every sending process a random service.instance.id, which is part of
each event's id, so the two runs of a scenario have different ids."""
import json
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest

from conftest import HEAVY, Vigil, free_port, scenario_dir, send_scenario
from test_kafka import Broker, consume, tansu_path
from test_scenarios import check

pytestmark = HEAVY

confluent_kafka = pytest.importorskip("confluent_kafka")

EVENTS, STATE = "vigil.events", "vigil.state"
ALL = ["sensitive-file-read", "scheduled-task-created", "bypass-permissions-enabled", "mcp-unapproved-server",
       "connector-write-off-hours", "connector-write-burst", "exfiltration-chain", "unattended-session",
       "benign-workday"]
STATEFUL = ["unattended-session", "connector-write-burst", "exfiltration-chain"]
# tansu 0.6 loses the rest of a record batch when a consumer resumes inside
# it, so every producer sends one record per batch (a broker workaround; real
# Kafka needs none).
PROPERTIES = {"batch.num.messages": "1"}


class Cluster(Broker):
    """A tansu broker with the three topics, and vigil processes around it."""

    def __init__(self, tmp_path):
        super().__init__(tmp_path / "broker")
        self.tmp = tmp_path
        self.procs = []

    def start(self):
        super().start()
        for topic in (EVENTS, STATE):
            out = subprocess.run([str(tansu_path()), "topic", "create", topic, "--partitions", "6",
                                  "--broker", f"tcp://{self.bootstrap}"], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr

    def stop(self):
        for p in self.procs:
            if p.proc is not None and p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
        super().stop()

    def role(self, command, name, config):
        cfg = dict(config, kafka={"brokers": self.bootstrap, "properties": PROPERTIES})
        v = Vigil(self.tmp / name, config=cfg, command=command)
        self.procs.append(v)
        v.start(wait_ready=False)
        return v

    def consume(self, n, timeout=90, linger=4.0):
        """The alert topic from the start with a new consumer group (read_committed),
        until n alerts came and `linger` more seconds, so that a duplicate would show."""
        return [g["alert"] for g in consume(self, n, timeout=timeout, linger=linger)]


@pytest.fixture
def cluster(tmp_path):
    if not tansu_path().exists():
        pytest.skip("tansu is not installed; run scripts/broker install (scripts/setup does)")
    c = Cluster(tmp_path)
    c.start()
    yield c
    c.stop()


def scenarios(names):
    return [json.loads((scenario_dir() / f"{n}.json").read_text()) for n in names]


def merged_config(items):
    """One config for several scenarios: the union of their lists."""
    lists = {}
    for s in items:
        for name, entries in ((s.get("config") or {}).get("lists") or {}).items():
            lists.setdefault(name, [])
            lists[name] += [e for e in entries if e not in lists[name]]
    return {"lists": lists, "engine": {"idle_timeout": "1s"}}


def shifted(items, tmp_path, part=None):
    """The scenarios moved to consecutive weeks (same weekday and hour, so
    business hours hold), so that each one's events follow the previous one's
    in event time; `part` keeps the first or second half of each (repeats unrolled)."""
    from test_restart import halves
    out = []
    for i, s in enumerate(items):
        base = datetime.fromisoformat(s["base_time"].replace("Z", "+00:00")).astimezone(timezone.utc)
        s = dict(s, base_time=(base + timedelta(weeks=4 * i)).strftime("%Y-%m-%dT%H:%M:%SZ"))
        path = tmp_path / f"{i:02d}-{s['name']}.json"
        path.write_text(json.dumps(s))
        if part is not None:
            sub = tmp_path / f"halves-{i:02d}"
            sub.mkdir(exist_ok=True)
            path = halves(s, sub)[part]
        out.append(path)
    return out


def comparable(alerts):
    from test_restart import comparable as strip
    return strip(alerts)


def expected_total(items):
    return sum(len(s.get("expect", [])) for s in items)


def reference_alerts(tmp_path, items, config):
    """What one `vigil serve` raises for the same sends."""
    v = Vigil(tmp_path / "serve", config=config).start()
    try:
        for path in shifted(items, tmp_path / "serve"):
            send_scenario([path], v.http)
        v.wait_alerts(until=lambda a: len(a) >= expected_total(items))
        assert v.stop() == 0, v.log()
        return v.alerts()
    finally:
        if v.proc.poll() is None:
            v.proc.kill()


def check_each(items, alerts):
    problems = []
    for s in items:
        mine = [a for a in alerts if any(a["rule_id"] == w["rule_id"] and a.get("user") == w["user"]
                                         for w in s.get("expect", []))]
        problems += check(s, mine)
    return problems


def test_two_ingest_and_three_detect_nodes_raise_what_one_serve_raises(cluster, tmp_path):
    items = scenarios(ALL)
    config = merged_config(items)
    ingest = [cluster.role("ingest", f"ingest{i}", config) for i in range(2)]
    detect = [cluster.role("detect", f"detect{i}", config) for i in range(3)]
    for v in ingest + detect:
        v.wait_ready(timeout=60)
    (tmp_path / "sent").mkdir()
    for i, path in enumerate(shifted(items, tmp_path / "sent")):
        send_scenario([path], ingest[i % 2].http)
    got = cluster.consume(expected_total(items))
    ids = [a["id"] for a in got]
    assert len(ids) == len(set(ids)), f"an alert was published twice: {ids}"
    assert not check_each(items, got), check_each(items, got)

    (tmp_path / "serve").mkdir()
    want = reference_alerts(tmp_path, items, config)
    assert comparable(got) == comparable(want)

    # Every detector took part, and each one's local alert file holds what it published.
    for v in detect:
        assert v.stop() == 0, v.log()
    local = [a for v in detect for a in v.alerts()]
    assert sorted(a["id"] for a in local) == sorted(ids)
    assert sum(1 for v in detect if v.alerts()) >= 2, "the partitions were not shared"


def murmur2_partition(key, partitions):
    """Kafka's default partitioner (Java murmur2), which vigil ingest configures."""
    data = key.encode()
    m, h = 0x5BD1E995, (0x9747B28C ^ len(data)) & 0xFFFFFFFF
    for i in range(len(data) // 4):
        k = int.from_bytes(data[i * 4:i * 4 + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = data[len(data) // 4 * 4:]
    if len(rest) == 3:
        h ^= rest[2] << 16
    if len(rest) >= 2:
        h ^= rest[1] << 8
    if rest:
        h = ((h ^ rest[0]) * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


def strip_ansi(text):
    import re
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def full_log(v):
    return v.log_path.read_text(errors="replace")


@pytest.mark.parametrize("name", STATEFUL)
def test_a_detector_killed_mid_scenario_loses_and_repeats_nothing(cluster, tmp_path, name):
    items = scenarios([name])
    config = merged_config(items)
    ingest = cluster.role("ingest", "ingest", config)
    detect = [cluster.role("detect", f"detect{i}", config) for i in range(3)]
    for v in [ingest] + detect:
        v.wait_ready(timeout=60)
    (tmp_path / "first").mkdir()
    send_scenario(shifted(items, tmp_path / "first", part=0), ingest.http)
    # Let the partitions commit checkpoints of the first half, then kill the
    # detector that holds the state the expected alert depends on.
    user = items[0]["expect"][0]["user"]
    partition = murmur2_partition(f"default\x1f{user}", 6)
    deadline = time.time() + 60
    while True:
        owner = [v for v in detect if f'vigil_detect_owned{{partition="{partition}"}} 1' in v.metrics()]
        if len(owner) == 1:
            break
        assert time.time() < deadline, f"partition {partition} of {user} is owned by {len(owner)} detectors"
        time.sleep(0.5)
    victim = owner[0]
    time.sleep(3)  # a commit interval and more: the first half is checkpointed
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    # tansu 0.6 does not hand a killed member's partitions to the others by
    # itself; the next membership change does. An orchestrator restarting
    # the crashed detector is that change here.
    detect.append(cluster.role("detect", "replacement", config))
    restored = f"partition state restored from its checkpoint partition={partition} "
    deadline = time.time() + 90
    while not any(restored in strip_ansi(full_log(v)) for v in detect if v is not victim):
        assert time.time() < deadline, "nobody took the partition over:\n" + "\n".join(full_log(v) for v in detect)
        time.sleep(0.5)
    (tmp_path / "second").mkdir()
    send_scenario(shifted(items, tmp_path / "second", part=1), ingest.http)
    got = cluster.consume(expected_total(items), timeout=120, linger=6.0)
    ids = [a["id"] for a in got]
    logs = "\n".join(full_log(v) for v in detect)
    assert len(ids) == len(set(ids)), f"an alert was published twice: {ids}\n{logs}"
    problems = check_each(items, got)
    assert not problems, "\n".join(problems) + "\n" + logs
    assert "partition state restored from its checkpoint" in logs


def test_detectors_joining_later_take_partitions_and_change_nothing(cluster, tmp_path):
    items = scenarios(STATEFUL + ["sensitive-file-read"])
    config = merged_config(items)
    ingest = cluster.role("ingest", "ingest", config)
    detect = [cluster.role("detect", "first", config)]
    for v in (ingest, detect[0]):
        v.wait_ready(timeout=60)
    (tmp_path / "sent").mkdir()
    paths = shifted(items, tmp_path / "sent")
    send_scenario(paths[:2], ingest.http)
    time.sleep(3)
    detect += [cluster.role("detect", f"late{i}", config) for i in range(2)]
    for v in detect[1:]:
        v.wait_ready(timeout=60)
    send_scenario(paths[2:], ingest.http)
    got = cluster.consume(expected_total(items), timeout=120, linger=6.0)
    ids = [a["id"] for a in got]
    logs = "\n".join(full_log(v) for v in detect)
    assert len(ids) == len(set(ids)), f"an alert was published twice: {ids}"
    assert not check_each(items, got), check_each(items, got)
    # The late detectors took partitions over from the first one's checkpoints.
    assert "partition state restored from its checkpoint" in "\n".join(full_log(v) for v in detect[1:]), logs
    (tmp_path / "serve").mkdir()
    assert comparable(got) == comparable(reference_alerts(tmp_path, items, config))


@pytest.mark.parametrize("command", ["ingest", "detect"])
def test_a_role_without_its_broker_says_so_without_flooding_the_log(tmp_path, command):
    # librdkafka reports the dead broker on every reconnect, several times a
    # second; each kind of report is logged once a minute.
    v = Vigil(tmp_path / command, config={"kafka": {"brokers": f"127.0.0.1:{free_port()}"}}, command=command)
    v.start(wait_ready=False)
    try:
        time.sleep(4)
        assert v.alive(), v.log()
    finally:
        assert v.stop() == 0, v.log()
    log = v.log_path.read_text(errors="replace")
    down = [line for line in log.splitlines() if "brokers are down" in line]
    assert 1 <= len(down) <= 2, "\n".join(down)
