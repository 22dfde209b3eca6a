"""What a serving process logs once it serves: its settings and the endpoints a user can paste."""

from __future__ import annotations

import json
import logging

from service.settings import Settings

log = logging.getLogger("qwen3_embed")


def log_settings(settings: Settings) -> None:
    log.info("settings %s", json.dumps(settings.describe(), default=str))


def print_endpoints(settings: Settings, grpc_port: int, http_port: int, metrics_port: int) -> None:
    """The banner: what a user can paste, true to the listeners (TLS, keys, bind address)."""
    host = "localhost" if settings.host in ("0.0.0.0", "::", "127.0.0.1") else settings.host
    tls = settings.tls_cert is not None
    scheme = "https" if tls else "http"
    extras = "health, reflection, TLS" if tls else "health, reflection"
    lines = [f"gRPC  {host}:{grpc_port}  (embedding.v1.EmbeddingService, {extras})"]
    if http_port:
        lines.append(f"HTTP  {scheme}://{host}:{http_port}/v1/embeddings  (OpenAI API; /metrics, /openapi.json)")
    if metrics_port:
        lines.append(f"ops   http://{host}:{metrics_port}/metrics  (plaintext, no key; /health/*)")
    transport = "-cacert <ca.pem>" if tls else "-plaintext"
    if settings.tls_client_ca is not None:
        transport += " -cert <client.pem> -key <client-key.pem>"
    auth = " -H 'authorization: Bearer <key>'" if settings.api_keys or settings.api_keys_file else ""
    lines.append(
        f'try:  grpcurl {transport}{auth} -d \'{{"inputs": ["How are you today?"], "prompt_name": "query"}}\' '
        f"{host}:{grpc_port} embedding.v1.EmbeddingService/Embed"
    )
    for line in lines:
        log.info(line)
