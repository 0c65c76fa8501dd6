"""TLS on both ports with a real certificate chain (made by openssl for the test): HTTPS and
gRPC over TLS, the Python client over https:// and grpcs://, mutual TLS refusing a client
without a certificate its CA signed, and a client that never handshakes dropped after
`tls.handshake_timeout_s` on both ports."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import grpc
import httpx
import pytest
from http_helpers import free_port, hung_up, live_server, running, wait_until_loaded

from service.app import DrainingServer, create_app, uvicorn_tls
from service.client import RewardClient, RewardServeError
from service.config import ModelConfig, Settings

SCALAR = "llama-scalar"
PAIRS = [("What is 2 + 2?", "It is 4.")]
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed(name: str, cn: str, cwd: Path, extension: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={cn}", cwd=cwd)
    (cwd / f"{name}.ext").write_text(extension)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=cwd)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    out = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=rewardserve-test-ca", cwd=out)
    _signed("server", "127.0.0.1", out, "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _signed("client", "trainer", out, "extendedKeyUsage=clientAuth\n")
    return out


def _serve(tiny_model_dirs, certs: Path, mutual: bool):
    settings = Settings(models=[ModelConfig(name=SCALAR, path=str(tiny_model_dirs[SCALAR]))],
                        server={"grpc_port": free_port()},
                        tls={"cert_file": certs / "server.crt", "key_file": certs / "server.key",
                             "client_ca_file": certs / "ca.crt" if mutual else None})
    app = create_app(settings)
    return app, live_server(app, **uvicorn_tls(settings))


def test_https_and_grpcs(tiny_model_dirs, certs):
    app, server = _serve(tiny_model_dirs, certs, mutual=False)
    with server as url:
        assert url.startswith("https://")
        with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(certs / "ca.crt"))) as http:
            assert wait_until_loaded(http).status_code == 200
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA refuses the server
            httpx.get(f"{url}/health/live")
        scores = []
        for target in (url, f"grpcs://127.0.0.1:{app.state.grpc_port}"):
            with RewardClient(target, model=SCALAR, tls_ca_file=str(certs / "ca.crt")) as client:
                scores.append(client.score(PAIRS).results[0].score)
        assert scores[0] == pytest.approx(scores[1], abs=1e-6)
        with grpc.insecure_channel(f"127.0.0.1:{app.state.grpc_port}") as plain:  # no plaintext on the TLS port
            with pytest.raises(grpc.FutureTimeoutError):
                grpc.channel_ready_future(plain).result(timeout=2)


def test_mutual_tls_needs_a_client_certificate(tiny_model_dirs, certs):
    app, server = _serve(tiny_model_dirs, certs, mutual=True)
    ca, cert, key = (str(certs / n) for n in ("ca.crt", "client.crt", "client.key"))
    with server as url:
        context = ssl.create_default_context(cafile=ca)
        context.load_cert_chain(cert, key)
        with httpx.Client(base_url=url, verify=context) as http:
            assert wait_until_loaded(http).status_code == 200
        for target in (url, f"grpcs://127.0.0.1:{app.state.grpc_port}"):
            with RewardClient(target, model=SCALAR, tls_ca_file=ca, tls_cert_file=cert, tls_key_file=key) as client:
                assert client.score(PAIRS).results[0].num_tokens > 0
            with RewardClient(target, model=SCALAR, tls_ca_file=ca, retries=0, timeout_s=5) as client, \
                    pytest.raises((RewardServeError, httpx.HTTPError)):
                client.score(PAIRS)


def test_a_client_that_never_handshakes_is_dropped(tiny_model_dirs, certs):
    settings = Settings(models=[ModelConfig(name=SCALAR, path=str(tiny_model_dirs[SCALAR]))],
                        server={"port": 0, "grpc_port": free_port(), "log_level": "warning"},
                        tls={"cert_file": certs / "server.crt", "key_file": certs / "server.key",
                             "handshake_timeout_s": 1})
    app = create_app(settings)
    with running(DrainingServer(app, settings)) as port:
        for target in (port, app.state.grpc_port):  # connects, sends nothing: closed well within 30 s
            with socket.create_connection(("127.0.0.1", target), timeout=30) as sock:
                assert hung_up(sock) == b""
        context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=context) as http:
            assert wait_until_loaded(http).status_code == 200


def test_tls_settings_come_whole(tmp_path):
    model = [ModelConfig(name="m", path="/m")]
    with pytest.raises(ValueError, match="both"):
        Settings(models=model, tls={"cert_file": tmp_path / "c"})
    with pytest.raises(ValueError, match="mutual"):
        Settings(models=model, tls={"client_ca_file": tmp_path / "ca"})
