"""`vigil demo`, the first command a new user runs: it starts its own vigil,
sends a day of telemetry over OTLP, and shows every attack of the default pack."""
import json
import subprocess

from conftest import HEAVY, VIGIL_BIN, duck

pytestmark = HEAVY

RULES = {
    "scheduled-task-created", "mcp-unapproved-server", "connector-write-off-hours", "connector-write-burst",
    "sensitive-file-read", "unattended-session", "bypass-permissions-enabled", "exfiltration-chain",
}


def test_demo_shows_every_attack_once_per_subject_and_archives_the_day(tmp_path):
    data = tmp_path / "demo"
    run = subprocess.run([VIGIL_BIN, "demo", "--data-dir", str(data)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    alerts = [json.loads(line) for line in (data / "alerts.jsonl").read_text().splitlines()]
    assert {a["rule_id"] for a in alerts} == RULES
    subjects = sorted((a["rule_id"], a.get("user")) for a in alerts)
    assert len(subjects) == len(set(subjects)) == 10, subjects
    for rule in RULES:
        assert rule in run.stdout, f"{rule} not shown in the table"
    assert "duckdb" in run.stdout and str(data / "archive") in run.stdout
    kinds = dict(duck(f"select kind, count(*) from read_parquet('{data}/archive/events/**/*.parquet') group by 1"))
    assert kinds["file_read"] >= 40 and kinds["connector_action"] >= 30 and kinds["model_call"] >= 8
    # A second run refuses to mix its day into an existing data directory.
    again = subprocess.run([VIGIL_BIN, "demo", "--data-dir", str(data)], capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "already holds" in again.stderr
