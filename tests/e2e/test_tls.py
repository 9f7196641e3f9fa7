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
            assert time.time() < deadline and v.proc.poll() is None, v.log()
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
    time.sleep(0.5)
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
