"""TLS and mTLS for gRPC and HTTP with certificates generated here (a CA, a server certificate for
127.0.0.1/localhost, a client certificate, and a rogue CA), API keys from a file, and what the log keeps.

The facades run against the session Triton (read-only use) on loopback ports."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.gen.embedding.v1 import embedding_pb2 as pb
from service.triton.runtime import TritonProcess, free_port
from tests.helpers import Facade, cosine, embed, run_facade, vectors

KEYS = ["file-key-one-7a1b2c3d", "file-key-two-9e8f7a6b"]
COMMENTED_KEY = "commented-out-key-000"
SECRET_TEXT = "confidential-input-text-5c2d91"
# Each facade's plaintext metrics/health port (QWEN3_EMBED_METRICS_PORT), by fixture name.
OPS_PORTS = {"tls": free_port(), "mtls": free_port()}


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_cert: Path
    rogue_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path.with_suffix(".crt"), path.with_suffix(".key")


def _ca(common: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    common: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return key, builder.sign(ca_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _ca("test CA")
    ca, _ = _write(d / "ca", ca_key, ca_cert)
    server_cert, server_key = _write(d / "server", *_leaf("127.0.0.1", ca_key, ca_cert, server=True))
    client_cert, client_key = _write(d / "client", *_leaf("client", ca_key, ca_cert, server=False))
    rogue_key, rogue_cert_obj = _ca("rogue CA")
    rogue_ca, _ = _write(d / "rogue-ca", rogue_key, rogue_cert_obj)
    rogue_cert, rogue_client_key = _write(d / "rogue", *_leaf("rogue", rogue_key, rogue_cert_obj, server=False))
    return Pki(ca, server_cert, server_key, client_cert, client_key, rogue_ca, rogue_cert, rogue_client_key)


def secure_channel(target: str, root: Path | None, cert: Path | None = None, key: Path | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=root.read_bytes() if root else None,
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.secure_channel(target, creds)


def wait_serving_tls(facade: Facade, pki: Pki, mtls: bool) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert facade.process.poll() is None, f"facade exited:\n{facade.log()}"
        cert, key = (pki.client_cert, pki.client_key) if mtls else (None, None)
        try:
            with secure_channel(facade.target, pki.ca, cert, key) as channel:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"TLS facade not serving:\n{facade.log()[-2000:]}")


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "api-keys.txt"
    # An indented comment is a comment too (once, it became the key "# revoked: ...").
    path.write_text(
        f"# one key per line\n{KEYS[0]}\n\n  {KEYS[1]}  \n# {COMMENTED_KEY}\n   # revoked: {COMMENTED_KEY}\n"
    )
    return path


@pytest.fixture(scope="module")
def tls_facade(
    model_repository: Path, triton: TritonProcess, logs_dir: Path, pki: Pki, keys_file: Path
) -> Iterator[Facade]:
    env = {
        "QWEN3_EMBED_TLS_CERT": str(pki.server_cert),
        "QWEN3_EMBED_TLS_KEY": str(pki.server_key),
        "QWEN3_EMBED_API_KEYS_FILE": str(keys_file),
        "QWEN3_EMBED_METRICS_PORT": str(OPS_PORTS["tls"]),
    }
    with run_facade(model_repository, triton.grpc_url, logs_dir, env=env, wait_serving=False) as facade:
        wait_serving_tls(facade, pki, mtls=False)
        yield facade


@pytest.fixture(scope="module")
def mtls_facade(model_repository: Path, triton: TritonProcess, logs_dir: Path, pki: Pki) -> Iterator[Facade]:
    env = {
        "QWEN3_EMBED_TLS_CERT": str(pki.server_cert),
        "QWEN3_EMBED_TLS_KEY": str(pki.server_key),
        "QWEN3_EMBED_TLS_CLIENT_CA": str(pki.ca),
        "QWEN3_EMBED_METRICS_PORT": str(OPS_PORTS["mtls"]),
    }
    with run_facade(model_repository, triton.grpc_url, logs_dir, env=env, wait_serving=False) as facade:
        wait_serving_tls(facade, pki, mtls=True)
        yield facade


@pytest.fixture(scope="module")
def plain_vector(facade: Facade) -> np.ndarray:
    with grpc.insecure_channel(facade.target) as channel:
        return vectors(embed(facade.stub(channel), [SECRET_TEXT]))[0]


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def fails(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()  # type: ignore[operator]
    return err.value.code()  # type: ignore[no-any-return]


def test_grpc_tls_works_with_the_ca_and_fails_without(tls_facade: Facade, pki: Pki, plain_vector: np.ndarray) -> None:
    request = pb.EmbedRequest(inputs=[SECRET_TEXT])
    with secure_channel(tls_facade.target, pki.ca) as channel:
        got = vectors(tls_facade.stub(channel).Embed(request, metadata=bearer(KEYS[1]), timeout=30))[0]
    assert cosine(got, plain_vector) >= 0.99999
    for channel in (
        secure_channel(tls_facade.target, None),  # system roots do not know our CA
        secure_channel(tls_facade.target, pki.rogue_ca),
        grpc.insecure_channel(tls_facade.target),
    ):  # plaintext to a TLS port
        with channel:
            stub = tls_facade.stub(channel)
            assert (
                fails(lambda s=stub: s.Embed(request, metadata=bearer(KEYS[0]), timeout=10))
                == grpc.StatusCode.UNAVAILABLE
            )


def test_api_keys_from_a_file(tls_facade: Facade, pki: Pki) -> None:
    request = pb.EmbedRequest(inputs=[SECRET_TEXT])
    with secure_channel(tls_facade.target, pki.ca) as channel:
        stub = tls_facade.stub(channel)
        for key in KEYS:
            assert stub.Embed(request, metadata=bearer(key), timeout=30).embeddings
        for metadata in (
            None,
            bearer(COMMENTED_KEY),
            bearer(f"# {COMMENTED_KEY}"),
            bearer(KEYS[0] + "x"),
            bearer(""),
            bearer(f"# revoked: {COMMENTED_KEY}"),
        ):
            with pytest.raises(grpc.RpcError) as err:
                stub.Embed(request, metadata=metadata, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert all(k not in err.value.details() for k in (*KEYS, COMMENTED_KEY))
        # Health stays open without a key.
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_http_tls(tls_facade: Facade, pki: Pki, plain_vector: np.ndarray) -> None:
    url = f"https://127.0.0.1:{tls_facade.http_port}"
    context = ssl.create_default_context(cafile=str(pki.ca))
    with httpx.Client(base_url=url, verify=context, timeout=30) as client:
        models = client.get("/v1/models", headers={"authorization": f"Bearer {KEYS[0]}"})
        assert models.status_code == 200
        body = {"model": models.json()["data"][0]["id"], "input": [SECRET_TEXT]}
        r = client.post("/v1/embeddings", json=body, headers={"authorization": f"Bearer {KEYS[1]}"})
        assert r.status_code == 200
        assert cosine(np.array(r.json()["data"][0]["embedding"]), plain_vector) >= 0.99999
        denied = client.post("/v1/embeddings", json=body, headers={"authorization": f"Bearer {COMMENTED_KEY}"})
        assert denied.status_code == 401 and COMMENTED_KEY not in denied.text
        assert client.get("/health/ready").status_code == 200
    with pytest.raises(httpx.ConnectError):  # no CA: the certificate is not trusted
        httpx.get(f"{url}/health/live", verify=ssl.create_default_context(), timeout=10)
    with pytest.raises(httpx.TransportError):  # plaintext HTTP to the TLS port
        r = httpx.get(f"http://127.0.0.1:{tls_facade.http_port}/health/live", timeout=10)
        if r.status_code >= 400:  # uvicorn may answer a plaintext request with 400 before closing
            raise httpx.RemoteProtocolError("refused")


def test_mtls_requires_a_client_certificate_from_the_ca(
    mtls_facade: Facade, pki: Pki, plain_vector: np.ndarray
) -> None:
    request = pb.EmbedRequest(inputs=[SECRET_TEXT])
    with secure_channel(mtls_facade.target, pki.ca, pki.client_cert, pki.client_key) as channel:
        got = vectors(mtls_facade.stub(channel).Embed(request, timeout=30))[0]
    assert cosine(got, plain_vector) >= 0.99999
    for channel in (
        secure_channel(mtls_facade.target, pki.ca),  # no client certificate
        secure_channel(mtls_facade.target, pki.ca, pki.rogue_cert, pki.rogue_key),
    ):  # wrong CA
        with channel:
            stub = mtls_facade.stub(channel)
            assert fails(lambda s=stub: s.Embed(request, timeout=10)) == grpc.StatusCode.UNAVAILABLE

    url = f"https://127.0.0.1:{mtls_facade.http_port}/health/live"
    with_cert = ssl.create_default_context(cafile=str(pki.ca))
    with_cert.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    assert httpx.get(url, verify=with_cert, timeout=10).status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(url, verify=ssl.create_default_context(cafile=str(pki.ca)), timeout=10)


@pytest.mark.parametrize("name", ["tls", "mtls"])
def test_probes_and_scrapes_work_beside_tls_on_the_plaintext_port(
    tls_facade: Facade, mtls_facade: Facade, pki: Pki, name: str
) -> None:
    """What the kubelet and Prometheus can do: plain HTTP, no client certificate, no API key. The port
    serves /metrics and /health/* and nothing else; the API port still wants TLS (and the key)."""
    facade = {"tls": tls_facade, "mtls": mtls_facade}[name]
    ops = f"http://127.0.0.1:{OPS_PORTS[name]}"
    assert httpx.get(f"{ops}/health/live", timeout=10).status_code == 200
    assert httpx.get(f"{ops}/health/ready", timeout=10).json() == {"status": "ready"}
    scrape = httpx.get(f"{ops}/metrics", timeout=10)
    assert scrape.status_code == 200 and "qwen3_embed_triton_up 1.0" in scrape.text
    assert scrape.headers["content-type"].startswith("text/plain")
    for path in ("/v1/models", "/info", "/docs", "/openapi.json"):
        assert httpx.get(f"{ops}{path}", timeout=10).status_code == 404, path
    assert httpx.post(f"{ops}/v1/embeddings", json={"input": ["x"]}, timeout=10).status_code == 404
    with pytest.raises(httpx.TransportError):  # TLS is not spoken here
        httpx.get(f"https://127.0.0.1:{OPS_PORTS[name]}/metrics", verify=False, timeout=10)
    if name == "tls":  # /metrics on the API port still needs the key
        context = ssl.create_default_context(cafile=str(pki.ca))
        api = f"https://127.0.0.1:{facade.http_port}/metrics"
        assert httpx.get(api, verify=context, timeout=10).status_code == 401


def test_no_keys_or_input_text_in_the_log(tls_facade: Facade, mtls_facade: Facade, pki: Pki) -> None:
    """By default (log_inputs off) neither the API keys nor any input text reach the facade's log, also
    for requests that fail validation; the start-up settings line only counts the keys."""
    with secure_channel(tls_facade.target, pki.ca) as channel:
        stub = tls_facade.stub(channel)
        with pytest.raises(grpc.RpcError):
            stub.Embed(pb.EmbedRequest(inputs=[SECRET_TEXT, ""]), metadata=bearer(KEYS[0]), timeout=10)
        with pytest.raises(grpc.RpcError):
            stub.Embed(pb.EmbedRequest(inputs=[SECRET_TEXT * 500]), metadata=bearer(KEYS[0]), timeout=30)
    for facade in (tls_facade, mtls_facade):
        log = facade.log()
        assert '"api_keys"' in log or "settings" in log  # the settings line was written
        for secret in (*KEYS, COMMENTED_KEY, SECRET_TEXT):
            assert secret not in log, f"{secret!r} found in {facade.log_path}"
    assert '"api_keys": "2 configured"' in tls_facade.log()
