"""Restarting vigil in the middle of each stateful scenario, cleanly (SIGTERM:
the engine's state goes into a snapshot) or by a crash (SIGKILL: the state is
rebuilt from the archive's write-ahead log and Parquet files), gives exactly
the alerts of an uninterrupted run: none lost, none twice, every field the
same. (Ids are compared within a run only: the OTel SDK gives each sending
process a random service.instance.id, which is part of every event's id.)"""
import json
import signal

import pytest

from conftest import scenario_dir, send_scenario

STATEFUL = ["unattended-session", "connector-write-burst", "exfiltration-chain"]
# Long enough for the longest scenario (3 hours of activity).
CONFIG = {"engine": {"idle_timeout": "1s", "restore_window": "8h"}}


def scenario_sender():
    """send.py, the scenarios' own sender: its reading of offsets and repeats."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("scenario_send", scenario_dir() / "send.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def comparable(alerts):
    """The alerts without the ids that depend on the sending process."""
    def strip(a):
        a = {k: v for k, v in a.items() if k not in ("id", "event_ids")}
        a["evidence"] = [{k: v for k, v in e.items() if k != "event_id"} for e in a["evidence"]]
        return json.dumps(a, sort_keys=True)
    return sorted(map(strip, alerts))


def halves(scenario, tmp_path):
    """The scenario as two files: record instances (repeats unrolled) before the
    middle of its time span, and the rest."""
    instances = []
    for r, t in scenario_sender().expand(scenario["records"]):
        one = {k: v for k, v in r.items() if k not in ("repeat", "every")}
        one["at"] = f"{'+' if t >= 0 else '-'}{abs(t):.3f}s"
        instances.append((t, one))
    times = sorted({t for t, _ in instances})
    cut = times[len(times) // 2]
    parts = []
    for name, keep in (("first", lambda t: t < cut), ("second", lambda t: t >= cut)):
        part = dict(scenario, records=[r for t, r in instances if keep(t)])
        path = tmp_path / f"{scenario['name']}-{name}.json"
        path.write_text(json.dumps(part))
        parts.append(path)
    assert all(json.loads(p.read_text())["records"] for p in parts)
    return parts


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
@pytest.mark.parametrize("name", STATEFUL)
def test_a_restart_mid_scenario_gives_the_uninterrupted_alerts(vigil_factory, tmp_path, name, how):
    path = scenario_dir() / f"{name}.json"
    scenario = json.loads(path.read_text())
    want = len(scenario.get("expect", []))
    config = dict(scenario.get("config") or {}, **CONFIG)

    whole = vigil_factory(config=config, name="whole")
    send_scenario([path], whole.http)
    whole.wait_alerts(until=lambda a: len(a) >= want)
    assert whole.stop() == 0, whole.log()
    reference = comparable(whole.alerts())
    assert len(reference) == want

    first, second = halves(scenario, tmp_path)
    v = vigil_factory(config=config, name="restarted")
    send_scenario([first], v.http)
    v.wait_alerts(settle=1.5)
    if how == "sigterm":
        assert v.stop() == 0, v.log()
    else:
        v.proc.send_signal(signal.SIGKILL)
        v.proc.wait()
    v.start()
    send_scenario([second], v.http)
    v.wait_alerts(until=lambda a: len(a) >= want, settle=2)
    assert v.stop() == 0, v.log()
    alerts = v.alerts()
    assert len({a["id"] for a in alerts}) == len(alerts), "an alert was written twice"
    assert comparable(alerts) == reference, f"{how}: {alerts} != {whole.alerts()}"
    how_restored = {"sigterm": "restored from the shutdown snapshot", "sigkill": "restored from the archive"}[how]
    assert f"detection state {how_restored}" in v.log_path.read_text(errors="replace"), v.log()


def test_a_second_vigil_on_the_same_data_dir_is_refused_and_the_first_loses_nothing(vigil_factory):
    """Two processes on one data directory would remove each other's open
    files and write-ahead log: the second is refused, naming the folder."""
    import subprocess

    from conftest import VIGIL_BIN, duck, events_glob, free_port

    path = scenario_dir() / "sensitive-file-read.json"
    v = vigil_factory()
    send_scenario([path], v.http)
    v.wait_alerts(until=lambda a: len(a) >= 1)
    grpc = free_port()
    second = subprocess.run(
        [VIGIL_BIN, "serve", "--config", str(v.data_dir / "vigil.yaml"), "--data-dir", str(v.data_dir),
         "--grpc-listen", f"127.0.0.1:{grpc}", "--http-listen", f"127.0.0.1:{free_port(taken={grpc})}"],
        capture_output=True, text=True, timeout=60)
    assert second.returncode != 0, second.stderr
    assert "in use by another vigil process" in second.stderr and str(v.data_dir) in second.stderr, second.stderr
    # The first goes on: a second send is archived with the first, nothing lost.
    send_scenario([path], v.http)
    assert v.stop() == 0, v.log()
    sent = len(json.loads(path.read_text())["records"])
    (rows,) = duck(f"select count(*) from read_parquet('{events_glob(v)}')")[0]
    assert rows == 2 * sent, (rows, sent)
