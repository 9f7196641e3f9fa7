"""TLS on both receivers: the OTel SDK exports over HTTPS and gRPC with TLS,
plain text is refused, and a renewed certificate is served after SIGHUP."""
import http.client
import signal
import ssl
import subprocess
import time

from conftest import duck, events_glob

T0 = 1773154800


def make_cert(dirpath, name):
    cert, key = dirpath / f"{name}.pem", dirpath / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True)
    return cert, key


def served_cert(port):
    return ssl.get_server_certificate(("127.0.0.1", port))


def test_sdk_exports_over_tls_and_the_certificate_reloads(vigil_factory, tmp_path, monkeypatch):
    # requests lets these variables override the exporter's own CA file.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    cert, key = make_cert(tmp_path, "first")
    v = vigil_factory(start=False, args=["--tls-cert", str(cert), "--tls-key", str(key)])
    v.start(wait_ready=False)
    # /readyz itself is behind TLS now.
    deadline = time.time() + 20
    while True:
        try:
            ctx = ssl.create_default_context(cafile=str(cert))
            import urllib.request
            if urllib.request.urlopen(f"https://127.0.0.1:{v.http_port}/readyz", context=ctx, timeout=1).status == 200:
                break
        except OSError:
            assert time.time() < deadline and v.alive(), v.log()
            time.sleep(0.2)

    import grpc
    from opentelemetry._logs import LogRecord
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcExporter
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    exporters = {
        "https@example.com": HttpExporter(endpoint=f"https://127.0.0.1:{v.http_port}/v1/logs", certificate_file=str(cert)),
        "grpcs@example.com": GrpcExporter(endpoint=f"127.0.0.1:{v.grpc_port}", insecure=False,
                                          credentials=grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())),
    }
    for user, exporter in exporters.items():
        lp = LoggerProvider(resource=Resource.create({"service.name": "claude-code"}))
        lp.add_log_record_processor(SimpleLogRecordProcessor(exporter))
        lp.get_logger("t").emit(LogRecord(timestamp=int(T0 * 1e9), body="claude_code.user_prompt",
                                          attributes={"event.name": "user_prompt", "user.email": user}))
        lp.shutdown()

    # Plain HTTP to the TLS port gets no OTLP answer.
    import urllib.error
    import urllib.request
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{v.http_port}/healthz", timeout=3)
        raise AssertionError("plain HTTP was answered on the TLS port")
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        pass

    # A renewed certificate is served to new connections after SIGHUP; a broken one is not taken.
    first = served_cert(v.http_port)
    second, second_key = make_cert(tmp_path, "second")
    cert.write_bytes(second.read_bytes())
    key.write_bytes(second_key.read_bytes())
    v.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while served_cert(v.http_port) == first:
        assert time.time() < deadline, v.log()
        time.sleep(0.2)
    assert served_cert(v.grpc_port) == served_cert(v.http_port)
    key.write_text("not a key")
    v.proc.send_signal(signal.SIGHUP)
    v.wait_log("TLS certificate NOT reloaded")
    assert served_cert(v.http_port) != first
    assert v.stop() == 0, v.log()
    assert "TLS certificate NOT reloaded" in v.log()
    users = {r[0] for r in duck(f"select user from read_parquet('{events_glob(v)}')")}
    assert users == {"https@example.com", "grpcs@example.com"}


def test_half_a_tls_configuration_is_refused_at_start(vigil_factory, tmp_path):
    cert, _ = make_cert(tmp_path, "only")
    v = vigil_factory(start=False, args=["--tls-cert", str(cert)])
    v.start(wait_ready=False)
    assert v.proc.wait(timeout=30) != 0
    assert "cert_file and key_file" in v.log()


def make_ca(dirpath):
    cert, key = dirpath / "ca.pem", dirpath / "ca.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN=vigil test CA {dirpath.name}",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"],
        check=True, capture_output=True)
    return cert, key


def make_client_cert(dirpath, ca, cn):
    """A client certificate for `cn`, signed by the CA (cert, key) `ca`."""
    cert, key, csr = dirpath / f"{cn}.pem", dirpath / f"{cn}.key", dirpath / f"{cn}.csr"
    ext = dirpath / f"{cn}.ext"
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n")
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(csr), "-subj", f"/O=acme/CN={cn}"], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
                    "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext)],
                   check=True, capture_output=True)
    return cert, key


def test_client_certificates_authenticate_tenants_over_both_receivers(vigil_factory, tmp_path, monkeypatch):
    """mTLS: a gateway's certificate, verified against the client CA, names its
    tenant through `cn:` in the tokens file; no certificate, a certificate
    from another CA, or an unbound name gets nothing accepted."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    import hashlib
    import json
    import urllib.request

    from test_ingest import json_logs

    server_cert, server_key = make_cert(tmp_path, "server")
    (tmp_path / "ca").mkdir()
    (tmp_path / "rogue").mkdir()
    ca = make_ca(tmp_path / "ca")
    rogue = make_ca(tmp_path / "rogue")
    gw = make_client_cert(tmp_path / "ca", ca, "gw-1.acme")
    unbound = make_client_cert(tmp_path / "ca", ca, "laptop-7")
    forged = make_client_cert(tmp_path / "rogue", rogue, "gw-1.acme")
    tokens = tmp_path / "tokens.yaml"
    token_hash = "sha256:" + hashlib.sha256(b"globex-token").hexdigest()
    tokens.write_text(f"acme: ['cn:gw-1.acme']\nglobex: ['{token_hash}']\n")
    v = vigil_factory(start=False, args=["--tls-cert", str(server_cert), "--tls-key", str(server_key),
                                         "--tls-client-ca", str(ca[0]), "--auth-tokens", str(tokens)])
    v.start(wait_ready=False)

    def post(client, user, token=None):
        ctx = ssl.create_default_context(cafile=str(server_cert))
        if client is not None:
            ctx.load_cert_chain(str(client[0]), str(client[1]))
        req = urllib.request.Request(f"https://127.0.0.1:{v.http_port}/v1/logs", data=json_logs(1, user),
                                     method="POST", headers={"Content-Type": "application/json"})
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            if e.code == 401:
                assert "bound to no tenant" in json.loads(e.read())["message"]
            return e.code
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return "handshake refused"

    import urllib.error
    deadline = time.time() + 20
    while post(gw, "cert@acme.example") != 200:
        assert time.time() < deadline and v.alive(), v.log()
        time.sleep(0.3)
    assert post(None, "nocert@example.com", token="globex-token") == "handshake refused"
    assert post(forged, "forged@example.com") == "handshake refused"
    assert post(unbound, "unbound@example.com") == 401
    assert post(unbound, "token@globex.example", token="globex-token") == 200

    # The OTel SDK's gRPC exporter with the gateway's certificate.
    import grpc
    from opentelemetry._logs import LogRecord
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    creds = grpc.ssl_channel_credentials(root_certificates=server_cert.read_bytes(),
                                         private_key=gw[1].read_bytes(), certificate_chain=gw[0].read_bytes())
    lp = LoggerProvider(resource=Resource.create({"service.name": "claude-code"}))
    lp.add_log_record_processor(SimpleLogRecordProcessor(
        OTLPLogExporter(endpoint=f"127.0.0.1:{v.grpc_port}", insecure=False, credentials=creds)))
    lp.get_logger("t").emit(LogRecord(timestamp=int(T0 * 1e9), body="claude_code.user_prompt",
                                      attributes={"event.name": "user_prompt", "user.email": "grpc@acme.example"}))
    lp.shutdown()

    assert v.stop() == 0, v.log()
    rows = duck(f"select tenant, \"user\" from read_parquet('{events_glob(v)}') order by 2")
    assert rows == [("acme", "cert@acme.example"), ("acme", "grpc@acme.example"),
                    ("globex", "token@globex.example")], rows


def test_a_client_ca_without_tls_is_refused_at_start(vigil_factory, tmp_path):
    ca = make_ca(tmp_path)
    v = vigil_factory(start=False, args=["--tls-client-ca", str(ca[0])])
    v.start(wait_ready=False)
    assert v.proc.wait(timeout=30) != 0
    assert "client_ca_file" in v.log()
