"""The files a user meets first are well formed: docker-compose.yml parses and
publishes the OTLP ports; the README starts with the two set-up commands and
.ci/run calls the README's test command."""
import re

import yaml

from conftest import ROOT


def test_compose_file_is_valid_yaml_with_kafka_topic_init_and_vigil():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    vigil = services["vigil"]
    assert vigil["build"] == "."
    assert {"4317:4317", "4318:4318"} <= set(vigil["ports"])
    assert "vigil-data" in doc["volumes"]
    assert any(v.startswith("vigil-data:") for v in vigil["volumes"])
    # Kafka in KRaft mode from the official image, a one-shot topic creation, vigil publishing to it.
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    init = services["kafka-init"]
    assert "vigil.alerts" in init["entrypoint"] and "--create" in init["entrypoint"]
    assert vigil["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    cmd = vigil["command"]
    assert cmd[cmd.index("--kafka-brokers") + 1] == "kafka:29092"
    listeners = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "kafka:29092" in listeners
    # The image listens on 0.0.0.0: without tokens vigil refuses to start unless told.
    assert "--insecure-no-auth" in cmd or "--auth-tokens" in cmd
    docker = (ROOT / "Dockerfile").read_text()
    assert "USER vigil" in docker and "EXPOSE 4317 4318" in docker


def test_compose_scale_out_profile_has_two_ingest_and_three_detect_nodes():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    roles = {name: s["entrypoint"][1] for name, s in services.items()
             if s.get("profiles") == ["scale-out"] and s.get("image") == "vigil:local"}
    assert sorted(roles.values()) == ["detect", "detect", "detect", "ingest", "ingest"]
    for name, role in roles.items():
        args = services[name]["entrypoint"]
        assert args[args.index("--kafka-brokers") + 1] == "kafka:29092"
        if role == "detect":
            assert args[args.index("--group") + 1] == "vigil-detect"
    # Each detector keeps its own data volume; the two ingest nodes publish different ports.
    assert len({services[n]["volumes"][0] for n, r in roles.items() if r == "detect"}) == 3
    assert len({services[n]["ports"][0] for n, r in roles.items() if r == "ingest"}) == 2
    init = services["kafka-init-scale-out"]["entrypoint"][-1]
    assert "vigil.events" in init and "vigil.state" in init and "cleanup.policy=compact" in init


def test_readme_two_commands_and_ci_agree():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    cmds = [line.split("#")[0].strip() for line in block]
    assert cmds == ["./scripts/serve", "./scripts/test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "exec ./scripts/test" in ci
