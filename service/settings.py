"""The one settings object: CLI flags override `QWEN3_EMBED_*` environment variables override defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QWEN3_EMBED_", extra="ignore")

    # Model and Triton
    model_repository: Path = Path("model_repository")
    model_name: str = "qwen3_embedding"
    served_model_name: str = Field("", description="Name clients see; default: the source model's basename")
    triton_url: str = Field("", description="host:port of Triton's gRPC endpoint; empty = start one locally")
    triton_log: Path = Path(".cache/triton.log")
    triton_start_timeout_s: float = 180.0
    tokenizer_dir: Path | None = Field(None, description="Default: <repository>/<model>/tokenizer")

    # Listeners
    host: str = "0.0.0.0"
    grpc_port: int = 50051
    http_port: int = Field(8080, description="OpenAI-compatible HTTP API and /metrics; 0 disables it")

    # Request limits
    max_batch_inputs: int = Field(2048, ge=1)
    max_in_flight: int = Field(64, ge=1, description="Concurrent requests per process; beyond -> overloaded")
    max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="gRPC request size; refused from the length prefix"
    )
    max_http_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_request_tokens: int = Field(
        1 << 20, ge=16, description="Tokens (or token ids) in one request, all inputs together"
    )
    default_timeout_s: float = Field(60.0, gt=0, description="Deadline when the client sets none")
    stream_window: int = Field(8, ge=1, description="EmbedStream messages in progress per stream")

    # HTTP connections
    http_max_connections: int = Field(
        0, ge=0, description="Open HTTP connections; beyond, new ones are closed at once. 0 = from the fd limit"
    )
    http_request_timeout_s: float = Field(
        30.0, gt=0, description="Time a client has to send a whole request (headers and body)"
    )
    http_keepalive_s: float = Field(5.0, gt=0, description="Idle time before a kept-alive connection is closed")

    # Pipeline
    buckets: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="Padded lengths; default: powers of two from 16 to max tokens"
    )
    token_budget: int = Field(16384, ge=16, description="Padded tokens per Triton request")
    max_triton_batch: int = Field(
        0, ge=0, description="Rows per Triton request; 0 = the model's max_batch_size"
    )
    tokenizer_threads: int = Field(2, ge=1)

    # Lifecycle
    drain_seconds: float = Field(10.0, ge=0)
    health_poll_s: float = Field(1.0, gt=0)

    # Supervision (local Triton)
    triton_max_restarts: int = Field(
        5, ge=0, description="Restarts in a row (Triton up < 1 min in between) before the facade exits non-zero"
    )
    triton_restart_backoff_s: float = Field(1.0, gt=0, description="Delay before the 2nd restart in a row")
    triton_restart_backoff_max_s: float = Field(30.0, gt=0, description="The delay doubles up to this")

    # Security
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)
    api_keys_file: Path | None = None
    auth_exempt: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "/grpc.health.v1.Health/",
            "/grpc.reflection.v1alpha.ServerReflection/",
            "/grpc.reflection.v1.ServerReflection/",
            "/health/",
        ]
    )
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    log_level: str = "INFO"

    @field_validator("buckets", "api_keys", "auth_exempt", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("buckets")
    @classmethod
    def _sorted_buckets(cls, value: list[int]) -> list[int]:
        if any(int(v) < 1 for v in value):
            raise ValueError("buckets must be positive")
        return sorted({int(v) for v in value})

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert and tls_key")
        return self

    def all_api_keys(self) -> list[str]:
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            lines = self.api_keys_file.read_text().splitlines()
            keys += [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
        return keys

    def resolved_tokenizer_dir(self) -> Path:
        return self.tokenizer_dir or self.model_repository / self.model_name / "tokenizer"

    def describe(self) -> dict[str, Any]:
        """For the start-up log: secrets are counted, never printed."""
        out = self.model_dump(mode="json")
        out["api_keys"] = f"{len(self.all_api_keys())} configured"
        return out
