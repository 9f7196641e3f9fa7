"""Authenticated tenants: senders present bearer tokens (as OTel exporters do
with OTEL_EXPORTER_OTLP_HEADERS), the token decides the tenant, a missing or
wrong token is refused with nothing accepted, tokens reload on SIGHUP, and an
unauthenticated vigil refuses to listen beyond loopback unless told to."""
import hashlib
import json
import signal
import subprocess
import time

from conftest import PORT_TAKEN, START_ATTEMPTS, VIGIL_BIN, duck, events_glob, free_port
from test_ingest import json_logs


def sha(token):
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def test_token_cli_prints_hashes_the_file_accepts():
    out = subprocess.run([VIGIL_BIN, "token", "hash"], input="s3cret\n", capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == sha("s3cret")
    new = subprocess.run([VIGIL_BIN, "token", "new"], capture_output=True, text=True, timeout=30)
    lines = dict(line.split(": ", 1) for line in new.stdout.strip().splitlines())
    assert lines["token"].strip().startswith("vgl_") and len(lines["token"].strip()) > 40
    assert lines["hash"].strip() == sha(lines["token"].strip())


def post_auth(url, body, token=None):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_tokens_bind_tenants_refuse_strangers_and_reload_on_sighup(vigil_factory, tmp_path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"acme:\n  - {sha('acme-token')}\nglobex: [{sha('globex-token')}]\n")
    v = vigil_factory(args=["--auth-tokens", str(tokens)])
    url = v.http + "/v1/logs"
    assert post_auth(url, json_logs(2, "a@acme.example"), "acme-token")[0] == 200
    assert post_auth(url, json_logs(3, "g@globex.example"), "globex-token")[0] == 200
    status, body, headers = post_auth(url, json_logs(1, "nobody@example.com"))
    assert status == 401 and headers.get("www-authenticate") == "Bearer" and "Bearer" in json.loads(body)["message"]
    assert post_auth(url, json_logs(1, "forger@example.com"), "guessed")[0] == 401

    # The real OTel SDK exporter, with the header an admin configures.
    from opentelemetry._logs import LogRecord
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    for token in ("acme-token", "wrong"):
        lp = LoggerProvider(resource=Resource.create({"service.name": "claude-code"}))
        lp.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(
            endpoint=f"127.0.0.1:{v.grpc_port}", insecure=True, headers={"authorization": f"Bearer {token}"})))
        lp.get_logger("t").emit(LogRecord(timestamp=int(1773154800e9), body="claude_code.user_prompt",
                                          attributes={"event.name": "user_prompt", "user.email": f"sdk-{token}@acme.example"}))
        lp.shutdown()

    # A new tenant appears after SIGHUP; a broken file then keeps the tokens in force.
    tokens.write_text(tokens.read_text() + f"initech: [{sha('initech-token')}]\n")
    v.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while post_auth(url, json_logs(1, "i@initech.example"), "initech-token")[0] != 200:
        assert time.time() < deadline, v.log()
        time.sleep(0.2)
    tokens.write_text("broken: [")
    v.proc.send_signal(signal.SIGHUP)
    v.wait_log("NOT reloaded")
    assert post_auth(url, json_logs(1, "a2@acme.example"), "acme-token")[0] == 200
    assert 'status="unauthenticated"' in v.metrics()
    assert v.stop() == 0, v.log()
    rows = dict(duck(f"select tenant || ' ' || user, count(*) from read_parquet('{events_glob(v)}') group by 1"))
    assert rows == {
        "acme a@acme.example": 2, "globex g@globex.example": 3, "acme sdk-acme-token@acme.example": 1,
        "initech i@initech.example": 1, "acme a2@acme.example": 1,
    }
    assert "NOT reloaded" in v.log()
    assert "acme-token" not in v.log()


def test_unauthenticated_vigil_refuses_to_listen_beyond_loopback(tmp_path):
    import urllib.request

    base = [VIGIL_BIN, "serve", "--grpc-listen", f"127.0.0.1:{free_port()}"]
    out = subprocess.run(base + ["--data-dir", str(tmp_path / "d"), "--http-listen", f"0.0.0.0:{free_port()}"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "without authentication" in out.stderr and "--auth-tokens" in out.stderr

    # With --insecure-no-auth it listens on every interface, and says so at start and in /metrics.
    for _ in range(START_ATTEMPTS):
        port = free_port()
        proc = subprocess.Popen([VIGIL_BIN, "serve", "--grpc-listen", f"127.0.0.1:{free_port(taken={port})}",
                                 "--data-dir", str(tmp_path / "e"), "--http-listen", f"0.0.0.0:{port}",
                                 "--insecure-no-auth"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        metrics = None
        try:
            deadline = time.time() + 20
            while metrics is None and proc.poll() is None:
                try:
                    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
                except OSError:
                    assert time.time() < deadline, "vigil did not start"
                    time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        # A port taken by another process in the meantime: again on new ones.
        if metrics is not None or PORT_TAKEN not in err:
            break
    assert metrics is not None, f"vigil did not start:\n{err}"
    assert "vigil_insecure_no_auth 1" in metrics
    assert proc.returncode == 0
    assert "WITHOUT authentication" in err


def test_a_tenant_over_its_rate_limit_gets_429_and_the_others_do_not(vigil_factory, tmp_path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"acme: [{sha('acme-token')}]\nglobex: [{sha('globex-token')}]\n")
    v = vigil_factory(args=["--auth-tokens", str(tokens)],
                      config={"auth": {"rate_limits": {"tenants": {"acme": {"records_per_second": 10, "burst": 200}}}}})
    url = v.http + "/v1/logs"
    assert post_auth(url, json_logs(150, "a@acme.example"), "acme-token")[0] == 200
    status, body, headers = post_auth(url, json_logs(150, "a2@acme.example"), "acme-token")
    assert status == 429 and int(headers["retry-after"]) >= 1 and "rate limit" in json.loads(body)["message"]
    # A request larger than the burst can never fit: 413, not a 429 retried forever.
    status, body, _ = post_auth(url, json_logs(250, "a3@acme.example"), "acme-token")
    assert status == 413 and "burst allowance (200)" in json.loads(body)["message"], body
    for _ in range(3):
        assert post_auth(url, json_logs(150, "g@globex.example"), "globex-token")[0] == 200
    assert 'status="rate_limited"' in v.metrics()
    assert 'status="too_large"' in v.metrics()
    assert "a burst under 512" in v.log()
    assert v.stop() == 0
    rows = dict(duck(f"select tenant, count(*) from read_parquet('{events_glob(v)}') group by 1"))
    assert rows == {"acme": 150, "globex": 450}


def test_a_tenant_body_limit_refuses_only_that_tenants_large_requests(vigil_factory, tmp_path):
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"acme: [{sha('acme-token')}]\nglobex: [{sha('globex-token')}]\n")
    limits = {"tenants": {"acme": {"records_per_second": 1000000, "max_body_bytes": 20000}}}
    v = vigil_factory(args=["--auth-tokens", str(tokens)], config={"auth": {"rate_limits": limits}})
    url = v.http + "/v1/logs"
    big = json_logs(200, "a@acme.example")
    assert len(big) > 20000
    status, body, _ = post_auth(url, big, "acme-token")
    assert status == 413 and "acme" in json.loads(body)["message"]
    assert post_auth(url, json_logs(5, "a@acme.example"), "acme-token")[0] == 200
    assert post_auth(url, json_logs(200, "g@globex.example"), "globex-token")[0] == 200
    assert v.stop() == 0
    rows = dict(duck(f"select tenant, count(*) from read_parquet('{events_glob(v)}') group by 1"))
    assert rows == {"acme": 5, "globex": 200}
