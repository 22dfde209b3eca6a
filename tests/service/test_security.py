"""Network exposure and key handling, with real processes: the local Triton listens on loopback only, API
keys fail closed and follow their file, a taken gRPC port is a start-up error, the plaintext
metrics/health listener serves only what probes and Prometheus need, and a Triton whose model changes is
never served with stale model facts."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import httpx
import psutil
import pytest

from devtools.launch import launch_facade
from service.gen.embedding.v1 import embedding_pb2 as pb
from service.triton.runtime import TritonProcess, free_port
from tests.helpers import ROOT, wait_for
from tests.service.test_supervision import (
    assert_one_clear_message,
    copy_repository,
    local_facade,
    triton_processes,
)

OLD_KEY, KEPT_KEY, NEW_KEY = "sk-old-1f2e3d4c", "sk-kept-5a6b7c8d", "sk-new-9e0f1a2b"


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def serve(repository: Path, tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`qwen3-embed serve` against a Triton that is not there: start-up errors come before any Triton call."""
    cmd = [
        sys.executable, "-m", "service.cli", "serve", "--model-repository", str(repository),
        "--triton-url", f"127.0.0.1:{free_port()}", "--http-port", "0", *args,
    ]  # fmt: skip
    full_env = {**os.environ, "QWEN3_EMBED_HOST": "127.0.0.1", **env}
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60)


# ------------------------------------------------------------------------------------------------ API keys


@pytest.mark.parametrize(
    "content", ["# only a comment\n", "\n   \n", "# sk-a\n   # revoked: sk-old\n\n"], ids=["comment", "blank", "both"]
)
def test_a_keys_file_without_keys_fails_start_up(model_repository: Path, tmp_path: Path, content: str) -> None:
    keys = tmp_path / "keys"
    keys.write_text(content)
    started = time.monotonic()
    result = serve(model_repository, tmp_path, {"QWEN3_EMBED_API_KEYS_FILE": str(keys)}, "--grpc-port", "0")
    assert result.returncode == 2, result.stderr
    assert_one_clear_message(result.stderr, f"the API keys file {keys} holds no key")
    assert "cannot serve: " in result.stderr
    print(f"\nkeys file without keys ({content!r}): exit 2 after {time.monotonic() - started:.1f} s")


def test_keys_file_parsing_is_strict(tmp_path: Path) -> None:
    from service.settings import ApiKeysError, Settings

    keys = tmp_path / "keys"
    keys.write_text(f"# header\n   # revoked: {OLD_KEY}\n\t#{OLD_KEY}\n  {KEPT_KEY}  \n\n{NEW_KEY}\n")
    assert Settings(api_keys_file=keys).all_api_keys() == [KEPT_KEY, NEW_KEY]
    keys.write_text(f"{KEPT_KEY} {NEW_KEY}\n")  # two keys on a line are not one key
    with pytest.raises(ApiKeysError, match=r"line 1 .* not a single key"):
        Settings(api_keys_file=keys).all_api_keys()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def file_checker(keys: Path, fixed: tuple[str, ...] = ()) -> tuple[Any, FakeClock]:
    """A KeyChecker on a real keys file, with a clock the test advances past the reload interval."""
    from service.api.auth import KeyChecker
    from service.settings import Settings

    clock = FakeClock()
    settings = Settings(api_keys_file=keys, api_keys=list(fixed), api_keys_reload_s=1.0)
    return KeyChecker(settings.all_api_keys(), (), clock=clock), clock


def accepted(checker: Any, clock: FakeClock, *keys: str) -> list[str]:
    """The keys the checker accepts once it has looked at the file again."""
    clock.now += 2.0
    return [k for k in keys if checker.check(f"Bearer {k}")]


def within(seconds: float, work: Any) -> Any:
    """work() in a thread, failing the test (not hanging it) when it blocks."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(work).result(timeout=seconds)
    finally:
        pool.shutdown(wait=False)


def test_a_fifo_or_directory_at_the_keys_path_never_blocks(model_repository: Path, tmp_path: Path) -> None:
    from service.settings import ApiKeysError, Settings

    fifo = tmp_path / "fifo-keys"
    os.mkfifo(fifo)
    with pytest.raises(ApiKeysError, match="is a FIFO, not a regular file"):
        within(10, lambda: Settings(api_keys_file=fifo).all_api_keys())
    with pytest.raises(ApiKeysError, match="is a directory, not a regular file"):
        within(10, lambda: Settings(api_keys_file=tmp_path).all_api_keys())

    # Swapped in while serving: refused at once, and as it removes every key in force, nothing is accepted.
    keys = tmp_path / "keys"
    keys.write_text(f"{KEPT_KEY}\n")
    checker, clock = file_checker(keys)
    assert accepted(checker, clock, KEPT_KEY) == [KEPT_KEY]
    fifo.replace(keys)
    started = time.monotonic()
    assert within(10, lambda: accepted(checker, clock, KEPT_KEY)) == []
    assert time.monotonic() - started < 5  # no writer ever opened the FIFO: a blocking read would hang
    staged = tmp_path / "keys.new"
    staged.write_text(f"{KEPT_KEY}\n")
    staged.replace(keys)
    assert accepted(checker, clock, KEPT_KEY) == [KEPT_KEY]

    # At start-up: exit 2 with one message, at once.
    os.mkfifo(tmp_path / "fifo-2")
    started = time.monotonic()
    result = serve(model_repository, tmp_path, {"QWEN3_EMBED_API_KEYS_FILE": str(tmp_path / "fifo-2")})
    assert result.returncode == 2, result.stderr
    assert_one_clear_message(result.stderr, "is a FIFO, not a regular file")
    print(f"\nFIFO keys file at start-up: exit 2 after {time.monotonic() - started:.1f} s")


def test_a_half_written_keys_file_never_accepts_a_truncated_key(tmp_path: Path) -> None:
    from service.settings import ApiKeysError, Settings

    keys = tmp_path / "keys"
    keys.write_text(f"{KEPT_KEY}\n")
    checker, clock = file_checker(keys)
    truncated = NEW_KEY[:9]
    keys.write_text(f"{KEPT_KEY}\n{truncated}")  # an in-place writer, halfway through adding NEW_KEY
    assert accepted(checker, clock, KEPT_KEY, truncated, NEW_KEY) == [KEPT_KEY]  # removes nothing: kept
    keys.write_text(f"{KEPT_KEY}\n{NEW_KEY}\n")
    assert accepted(checker, clock, KEPT_KEY, truncated, NEW_KEY) == [KEPT_KEY, NEW_KEY]

    # Halfway through a rewrite that revokes OLD_KEY: the half file drops keys in force, so nothing passes.
    keys.write_text(f"{OLD_KEY}\n{KEPT_KEY}\n")
    assert accepted(checker, clock, OLD_KEY, KEPT_KEY) == [OLD_KEY, KEPT_KEY]
    keys.write_text(KEPT_KEY[:6])
    assert accepted(checker, clock, OLD_KEY, KEPT_KEY, KEPT_KEY[:6]) == []
    keys.write_text(f"{KEPT_KEY}\n")
    assert accepted(checker, clock, OLD_KEY, KEPT_KEY) == [KEPT_KEY]

    keys.write_text(f"{KEPT_KEY}\n{NEW_KEY}")  # at start-up an unterminated last line is an error
    with pytest.raises(ApiKeysError, match="does not end with a newline"):
        Settings(api_keys_file=keys).all_api_keys()


def test_a_bad_keys_file_never_leaves_a_revoked_key_valid(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{OLD_KEY}\n{KEPT_KEY}\n")
    checker, clock = file_checker(keys, fixed=("sk-from-env-77",))
    # Revoked with a note on the same line: the line is bad, OLD_KEY may be revoked -> every file key refused.
    keys.write_text(f"{KEPT_KEY}\n{OLD_KEY} revoked on monday\n")
    assert accepted(checker, clock, OLD_KEY, KEPT_KEY, "sk-from-env-77") == ["sk-from-env-77"]
    keys.write_text(f"{KEPT_KEY}\n")
    assert accepted(checker, clock, OLD_KEY, KEPT_KEY) == [KEPT_KEY]
    # A bad line that removes nothing (a key being added with a typo) keeps the keys in force, adds nothing.
    keys.write_text(f"{KEPT_KEY}\n{NEW_KEY} {NEW_KEY}\n")
    assert accepted(checker, clock, KEPT_KEY, NEW_KEY) == [KEPT_KEY]
    # Removed: refused (fail closed), then back.
    keys.unlink()
    assert accepted(checker, clock, KEPT_KEY) == []
    keys.write_text(f"{KEPT_KEY}\n")
    assert accepted(checker, clock, KEPT_KEY) == [KEPT_KEY]
    assert "refused until it is fixed" in caplog.text and "removes no key in force" in caplog.text
    for key in (OLD_KEY, KEPT_KEY, NEW_KEY):
        assert key not in caplog.text


def test_rotated_keys_apply_without_restart(model_repository: Path, triton: TritonProcess, tmp_path: Path) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text(f"{OLD_KEY}\n   # revoked: {NEW_KEY}\n{KEPT_KEY}\n")
    env = {"QWEN3_EMBED_API_KEYS_FILE": str(keys), "QWEN3_EMBED_API_KEYS_RELOAD_S": "0.5"}
    with launch_facade(model_repository, triton.grpc_url, tmp_path, env=env) as facade:
        request = pb.EmbedRequest(inputs=["rotation"])

        def grpc_code(key: str) -> grpc.StatusCode:
            with grpc.insecure_channel(facade.target) as channel:
                try:
                    facade.stub(channel).Embed(request, metadata=bearer(key), timeout=30)
                except grpc.RpcError as exc:
                    return exc.code()  # type: ignore[no-any-return]
            return grpc.StatusCode.OK

        def http_status(key: str) -> int:
            body = {"input": ["rotation"], "model": "any"}
            headers = {"authorization": f"Bearer {key}"}
            return httpx.post(f"{facade.base_url}/v1/embeddings", json=body, headers=headers, timeout=30).status_code

        assert grpc_code(OLD_KEY) == grpc_code(KEPT_KEY) == grpc.StatusCode.OK
        assert grpc_code(NEW_KEY) == grpc.StatusCode.UNAUTHENTICATED  # an indented comment is not a key
        assert http_status(NEW_KEY) == 401

        # Rotation as a Kubernetes Secret does it: a new file renamed over the old one.
        staged = tmp_path / "api-keys.new"
        staged.write_text(f"{KEPT_KEY}\n{NEW_KEY}\n")
        staged.replace(keys)
        rotated_at = time.monotonic()
        wait_for(lambda: grpc_code(NEW_KEY) == grpc.StatusCode.OK, 10, "the new key to work over gRPC")
        took = time.monotonic() - rotated_at
        wait_for(lambda: http_status(NEW_KEY) != 401, 10, "the new key to work over HTTP")
        assert grpc_code(OLD_KEY) == grpc.StatusCode.UNAUTHENTICATED
        assert http_status(OLD_KEY) == 401
        assert grpc_code(KEPT_KEY) == grpc.StatusCode.OK
        assert http_status(KEPT_KEY) != 401

        # A file emptied by mistake never turns auth off: every call is refused until a key is back.
        keys.write_text("# nothing here\n")
        wait_for(lambda: grpc_code(KEPT_KEY) == grpc.StatusCode.UNAUTHENTICATED, 10, "an empty file to refuse")
        assert grpc_code("") == grpc.StatusCode.UNAUTHENTICATED
        # HTTP has its own checker with its own reload clock: it follows within the reload interval.
        wait_for(lambda: http_status(KEPT_KEY) == 401, 10, "an empty file to refuse over HTTP")

        # A revocation written with a note on the line (a bad file): the revoked key is never valid again.
        keys.write_text(f"{KEPT_KEY}\n{OLD_KEY}\n")
        wait_for(lambda: grpc_code(OLD_KEY) == grpc.StatusCode.OK, 10, "the keys to be back")
        keys.write_text(f"{KEPT_KEY}\n{OLD_KEY} # revoked\n")
        wait_for(lambda: grpc_code(OLD_KEY) == grpc.StatusCode.UNAUTHENTICATED, 10, "the bad file to refuse")
        wait_for(lambda: http_status(OLD_KEY) == 401, 10, "the bad file to refuse over HTTP")
        assert grpc_code(KEPT_KEY) == grpc.StatusCode.UNAUTHENTICATED  # fail closed until the file is fixed

        # A FIFO swapped in at the path: nothing opens it for writing, and the facade keeps answering.
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        fifo.replace(keys)
        swapped = time.monotonic()
        time.sleep(1.0)  # past the reload interval: the next calls look at the FIFO
        assert grpc_code(KEPT_KEY) == grpc.StatusCode.UNAUTHENTICATED and http_status(KEPT_KEY) == 401
        assert httpx.get(f"{facade.base_url}/health/live", timeout=10).status_code == 200
        fifo_s = time.monotonic() - swapped
        assert fifo_s < 10
        staged.write_text(f"{KEPT_KEY}\n")
        staged.replace(keys)
        wait_for(lambda: grpc_code(KEPT_KEY) == grpc.StatusCode.OK, 10, "a good file to work again")
        assert facade.process.poll() is None
        log = facade.log()
        for key in (OLD_KEY, KEPT_KEY, NEW_KEY):
            assert key not in log
    print(f"\nrotated API key accepted {took:.1f} s after the file changed (reload every 0.5 s)")
    print(f"FIFO at the keys path: refused and healthy, {fifo_s:.1f} s for the calls after the swap (1 s sleep)")


# ------------------------------------------------------------------------------------------ listeners


def test_grpc_port_in_use_fails_start_up(model_repository: Path, tmp_path: Path) -> None:
    """Even a socket that allows sharing (SO_REUSEPORT, as a second facade with the old option had)."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve(model_repository, tmp_path, {}, "--grpc-port", str(port))
    assert result.returncode == 2, result.stderr
    assert_one_clear_message(result.stderr, f"cannot listen for gRPC on 127.0.0.1:{port}")


def test_metrics_port_in_use_fails_start_up(model_repository: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve(model_repository, tmp_path, {"QWEN3_EMBED_METRICS_PORT": str(port)}, "--grpc-port", "0")
    assert result.returncode == 2, result.stderr
    assert_one_clear_message(result.stderr, f"cannot listen for metrics on 127.0.0.1:{port}")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:  # gRPC's dual-stack ::ffff:127.0.0.1
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def test_local_triton_listens_on_loopback_only(model_repository: Path, tmp_path: Path) -> None:
    """The `ss` check: every listening socket of the facade's tritonserver is on a loopback address, on the
    ports the settings chose; the facade's own plaintext metrics/health listener needs no key."""
    repo = copy_repository(model_repository, tmp_path / "model_repository")
    ports = {"GRPC": free_port(), "HTTP": free_port(), "METRICS": free_port()}
    metrics_port = free_port()
    keys = tmp_path / "keys"
    keys.write_text(f"{KEPT_KEY}\n")
    env = {f"QWEN3_EMBED_TRITON_{k}_PORT": str(v) for k, v in ports.items()}
    env |= {"QWEN3_EMBED_METRICS_PORT": str(metrics_port), "QWEN3_EMBED_API_KEYS_FILE": str(keys)}
    with local_facade(repo, tmp_path, env) as facade:
        servers = [p for p in triton_processes(repo) if p.name() == "tritonserver"]
        assert len(servers) == 1
        listening = [c for c in servers[0].net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert {c.laddr.port for c in listening} == set(ports.values()), listening
        exposed = [c.laddr for c in listening if not is_loopback(c.laddr.ip)]
        assert not exposed, f"tritonserver listens beyond loopback: {exposed}"
        for proc in triton_processes(repo):  # the Python-backend stubs listen on nothing routable either
            for c in proc.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    assert is_loopback(c.laddr.ip), (proc.name(), c.laddr)

        ops = f"http://127.0.0.1:{metrics_port}"
        status, text = get(f"{ops}/metrics")
        assert status == 200 and "qwen3_embed_triton_up 1.0" in text
        assert get(f"{ops}/health/ready")[0] == 200 and get(f"{ops}/health/live")[0] == 200
        assert get(f"{ops}/v1/models")[0] == 404  # nothing else on this port
        assert get(f"{facade.base_url}/metrics")[0] == 401  # on the API port it still needs the key
        assert "reloading its facts" not in facade.log()  # the export read at start = what Triton serves
    print(f"\ntritonserver listened on {sorted(str(c.laddr) for c in listening)}")


# ------------------------------------------------------------------------------------- model facts


class ChangingBackend:
    """Triton as the readiness poll sees it: always ready, serving `config` (swapped by the test)."""

    def __init__(self, config: Any) -> None:
        self.config = config

    async def is_ready(self, models: list[str] | None = None) -> bool:
        return True

    async def model_states(self) -> dict[str, str]:
        return {self.config.name: "READY", "never_loaded": "UNAVAILABLE"}

    async def model_config(self, name: str = "") -> Any:
        assert name in ("", self.config.name)
        return self.config

    def for_model(self, info: Any) -> Any:
        return self


def test_a_changed_model_config_is_reloaded_or_not_served(model_repository: Path) -> None:
    from service.metrics import Metrics
    from service.repository import read_model_config
    from service.settings import Settings
    from service.state import ServiceState

    settings = Settings(model_repository=model_repository, triton_url="127.0.0.1:1")
    first = read_model_config(settings)
    backend = ChangingBackend(first)
    state = ServiceState(settings, backend, Metrics())  # type: ignore[arg-type]

    async def scenario() -> None:
        assert await state.refresh()
        assert state.embedder is not None
        hidden = state.embedder.info.hidden_size
        original = state.embedder

        assert await state.refresh() and state.embedder is original  # unchanged: nothing rebuilt

        changed = type(first)()
        changed.CopyFrom(first)
        changed.parameters["hidden_size"].string_value = str(hidden // 2)  # another export, say
        backend.config = changed
        assert await state.refresh()
        assert state.embedder is not original and state.embedder.info.hidden_size == hidden // 2

        broken = type(first)()
        broken.CopyFrom(first)
        del broken.parameters["hidden_size"]
        backend.config = broken
        assert not await state.refresh()  # NOT_SERVING with a reason, not stale facts
        assert state.embedder is None and "cannot be used" in state.unready_reason
        assert not await state.refresh()

        backend.config = first  # fixed: serving again, without a restart
        assert await state.refresh()
        assert state.embedder is not None and state.embedder.info.hidden_size == hidden
        assert not state.unready_reason
        state.embedder.close()

    asyncio.run(scenario())
