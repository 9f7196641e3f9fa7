"""Fixtures that run a real `vigil serve` on free loopback ports and read what it wrote.

Every test gets its own data directory and its own process; nothing is shared
between tests, so a scenario's config and clock stay its own.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
VIGIL_BIN = os.environ.get("VIGIL_BIN") or str(
    Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "vigil"
)


def scenario_dir():
    """The shared scenarios when this clone sits beside them (newest), else the copy in tests/."""
    shared = ROOT.parent / "shared" / "scenarios"
    if os.environ.get("VIGIL_SCENARIOS"):
        return Path(os.environ["VIGIL_SCENARIOS"])
    if (shared / "send.py").exists():
        return shared
    return ROOT / "tests" / "scenarios"


def free_port(taken=()):
    """A loopback port nothing listens on now. Another process on the machine
    may still take it before vigil binds it: Vigil.start picks new ports then."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port


# The suite runs on several workers (pytest-xdist, `--dist loadgroup`; see
# scripts/test): most tests wait on a vigil and a sender far more than they
# compute. Tests that load the machine on purpose (senders pushing as fast as
# they can, a five-process cluster, the memory limiter, CPU profiles) run one
# after the other on one worker, so that none of them measures another's load.
HEAVY = pytest.mark.xdist_group("heavy")


# How vigil says that a port it was given is taken (its exit line, see main.rs).
PORT_TAKEN = "Address already in use"
START_ATTEMPTS = 5


class Vigil:
    """One running `vigil serve` (or another role: `ingest`, `detect`)."""

    def __init__(self, data_dir, config=None, args=(), env=None, command="serve"):
        self.command = command
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.grpc_port = free_port()
        self.http_port = free_port(taken={self.grpc_port})
        self.config = dict(config or {})
        self.args = list(args)
        self.env = env
        self.proc = None
        self.log_path = self.data_dir / "vigil.log"

    @property
    def http(self):
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc(self):
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def archive(self):
        return self.data_dir / "archive"

    def start(self, wait_ready=True, _attempt=1):
        cfg_path = self.data_dir / "vigil.yaml"
        cfg = {"engine": {"idle_timeout": "1s"}}
        for k, v in self.config.items():
            if isinstance(v, dict) and isinstance(cfg.get(k), dict):
                cfg[k] = {**cfg[k], **v}
            else:
                cfg[k] = v
        cfg_path.write_text(yaml.safe_dump(cfg))
        cmd = [
            VIGIL_BIN, self.command, "--config", str(cfg_path),
            "--grpc-listen", f"127.0.0.1:{self.grpc_port}",
            "--http-listen", f"127.0.0.1:{self.http_port}",
            "--data-dir", str(self.data_dir),
            *self.args,
        ]
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
        if self.env:
            env.update(self.env)
        self._log = open(self.log_path, "ab")
        self._log_start = self._log.tell()
        self._attempt = _attempt
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        if wait_ready:
            self.wait_ready()
        return self

    def alive(self):
        """True while this start runs. When it exited because a port chosen for
        it was taken in the meantime (the machine is shared: any process can bind
        it), it starts again on new ports; tests read `http` and `grpc` after."""
        if self.proc.poll() is None:
            return True
        if self._attempt >= START_ATTEMPTS:
            return False
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                lost = PORT_TAKEN in f.read().decode(errors="replace")
        except FileNotFoundError:
            lost = False
        if not lost:
            return False
        self._log.close()
        self.grpc_port = free_port()
        self.http_port = free_port(taken={self.grpc_port})
        self.start(wait_ready=False, _attempt=self._attempt + 1)
        return True

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.alive():
                raise AssertionError(f"vigil exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.http + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except Exception:
                pass
            time.sleep(0.1)
        raise AssertionError(f"vigil not ready within {timeout}s:\n{self.log()}")

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            raise AssertionError(f"vigil did not stop within {timeout}s:\n{self.log()}")
        self._log.close()
        return rc

    def alerts(self):
        path = self.data_dir / "alerts.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_alerts(self, settle=2.5, timeout=30, until=None):
        """Waits until alerts.jsonl stops changing for `settle` seconds (and `until(alerts)` holds)."""
        deadline = time.time() + timeout
        last, last_change = None, time.time()
        while time.time() < deadline:
            cur = self.alerts()
            if cur != last:
                last, last_change = cur, time.time()
            elif time.time() - last_change >= settle and (until is None or until(cur)):
                return cur
            time.sleep(0.2)
        return self.alerts()

    def wait_log(self, text, timeout=15):
        """Waits until vigil's log says `text` (a reload's outcome is logged
        once the signal is handled, which a loaded machine may delay)."""
        deadline = time.time() + timeout
        while text not in self.log():
            assert time.time() < deadline and self.alive(), f"log never said {text!r}:\n{self.log()}"
            time.sleep(0.1)

    def metrics(self):
        with urllib.request.urlopen(self.http + "/metrics", timeout=5) as r:
            return r.read().decode()


@pytest.fixture
def vigil_factory(tmp_path):
    started = []

    def make(config=None, args=(), name="vigil", start=True, env=None):
        v = Vigil(tmp_path / name, config=config, args=args, env=env)
        started.append(v)
        return v.start() if start else v

    yield make
    for v in started:
        if v.proc is not None and v.proc.poll() is None:
            v.proc.kill()
            v.proc.wait()


def send_scenario(paths, endpoint, protocol="http", extra=()):
    """Sends scenario files through the real OpenTelemetry Python SDK (send.py)."""
    cmd = [sys.executable, str(scenario_dir() / "send.py"), *map(str, paths),
           "--endpoint", endpoint, "--protocol", protocol, *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"send.py failed:\n{out.stdout}\n{out.stderr}"
    return out


def duck(sql, params=None):
    import duckdb

    con = duckdb.connect()
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def events_glob(v):
    return str(v.archive / "events" / "**" / "*.parquet")


def alerts_glob(v):
    return str(v.archive / "alerts" / "**" / "*.parquet")
