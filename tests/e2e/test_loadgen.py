"""`vigil loadgen --stages`: the CPU per record of each stage of `vigil serve`,
as a platform team sizing a box or a detection engineer pricing a rule pack
runs it."""
import json
import os
import subprocess

from conftest import HEAVY, VIGIL_BIN

pytestmark = HEAVY

STAGES = ["read", "normalize", "columns", "parquet", "wal", "rules"]


def stages(tmp_path, *args):
    """Runs `loadgen --stages` with its scratch folder under tmp_path/tmp."""
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(scratch))
    return subprocess.run(
        [VIGIL_BIN, "loadgen", "--stages", *args],
        capture_output=True, text=True, timeout=300, env=env,
    ), scratch


def test_stages_report_every_stage_of_serve_and_leave_no_archive_behind(tmp_path):
    out, scratch = stages(tmp_path, "--json", "--records", "20000", "--start-time", "2026-03-10T09:00:00Z")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["records"] >= 20000
    assert report["requests"] == report["records"] // 1000
    assert [s["name"] for s in report["stages"]] == STAGES
    for s in report["stages"]:
        assert s["us_per_record"] > 0, s
    assert abs(report["total_us_per_record"] - sum(s["us_per_record"] for s in report["stages"])) < 1e-9
    rules = next(s for s in report["stages"] if s["name"] == "rules")
    assert rules["what"].startswith("10 rules"), rules
    # The archive stages wrote real files, in a scratch folder that is gone.
    assert list(scratch.iterdir()) == []


def test_stages_run_the_rules_and_mappings_of_the_given_config(tmp_path):
    rule = tmp_path / "reads.yaml"
    rule.write_text(
        "id: every-file-read\n"
        "title: Every file read\n"
        "severity: low\n"
        "key: [user, session]\n"
        "condition: {kind: file_read}\n"
    )
    config = tmp_path / "vigil.yaml"
    config.write_text(f"default_rules: false\nrules: [{rule}]\narchive: {{wal: false}}\n")
    out, _ = stages(tmp_path, "--json", "--records", "20000", "--config", str(config))
    assert out.returncode == 0, out.stderr
    by_name = {s["name"]: s for s in json.loads(out.stdout)["stages"]}
    assert by_name["rules"]["what"].startswith("1 rules"), by_name["rules"]
    # One alert per user and session that read a file: the rule really ran.
    alerts = int(by_name["rules"]["what"].split(", ")[1].split()[0])
    assert alerts > 0, by_name["rules"]


def test_stages_per_rule_price_each_rule_alone_over_the_same_records(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "id: every-file-read\n"
        "title: Every file read\n"
        "severity: low\n"
        "key: [user, session]\n"
        "condition: {kind: file_read}\n"
        "---\n"
        "id: every-event\n"
        "title: Every event\n"
        "severity: low\n"
        "key: [user, session]\n"
        "condition: {not: {kind: session_end}}\n"
    )
    config = tmp_path / "vigil.yaml"
    config.write_text(f"default_rules: false\nrules: [{rules}]\n")
    out, _ = stages(tmp_path, "--json", "--per-rule", "--records", "20000", "--config", str(config))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    costs = {r["id"]: r for r in report["rules"]}
    assert set(costs) == {"every-file-read", "every-event"}
    for r in report["rules"]:
        assert r["us_per_record"] > 0, r
    # Costliest first; alone, each rule finds what it finds in the pack.
    assert report["rules"] == sorted(report["rules"], key=lambda r: -r["us_per_record"])
    assert costs["every-file-read"]["alerts"] > 0 and costs["every-event"]["alerts"] > costs["every-file-read"]["alerts"]
    assert sum(r["alerts"] for r in report["rules"]) == report["alerts"]
    # Without --per-rule the report has no per-rule list.
    out, _ = stages(tmp_path, "--json", "--records", "5000", "--config", str(config))
    assert "rules" not in json.loads(out.stdout)


def test_stages_print_a_table_with_the_total_and_what_it_allows(tmp_path):
    out, _ = stages(tmp_path, "--records", "5000")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("stages: 5000 records in 5 requests")
    assert [line.split()[0] for line in lines[1:]] == STAGES + ["total"]
    assert "records/s on 1 core" in lines[-1]


def test_stages_over_otlp_json_read_with_the_json_reader_and_find_the_same_alerts(tmp_path):
    runs = {}
    for protocol in ["grpc", "http-json"]:
        out, _ = stages(tmp_path, "--json", "--records", "20000", "--protocol", protocol,
                        "--start-time", "2026-03-10T17:59:50Z")
        assert out.returncode == 0, out.stderr
        runs[protocol] = {s["name"]: s for s in json.loads(out.stdout)["stages"]}
    assert runs["http-json"]["read"]["what"].startswith("OTLP/JSON"), runs["http-json"]["read"]
    assert runs["grpc"]["read"]["what"].startswith("OTLP protobuf"), runs["grpc"]["read"]
    # The same records either way: the rules find the same alerts.
    assert runs["http-json"]["rules"]["what"] == runs["grpc"]["rules"]["what"]


def test_stages_refuse_a_broken_config_with_a_clear_error(tmp_path):
    config = tmp_path / "vigil.yaml"
    config.write_text("rules: [\n")
    out, _ = stages(tmp_path, "--config", str(config))
    assert out.returncode != 0
    assert "vigil.yaml" in out.stderr, out.stderr
    out = subprocess.run([VIGIL_BIN, "loadgen", "--config", str(config)], capture_output=True, text=True)
    assert out.returncode != 0 and "--stages" in out.stderr, out.stderr
