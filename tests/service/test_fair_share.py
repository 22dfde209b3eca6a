"""One valid request cannot monopolise a model: a maximal request's Triton calls take turns with a short
request's, so the short one waits for about one call (the slice), not for the whole big request. Real facade
(its request limits lowered so that a maximal request is 16 full Triton calls), the session's real Triton,
vectors compared with the reference. Figures: docs/reliability.md, "Fair share between requests"."""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from tokenizers import Tokenizer

from service.gen.embedding.v1 import embedding_pb2 as pb
from tests.conftest import TEST_MAX_BATCH, TEST_MAX_TOKENS
from tests.helpers import Facade, cosine, vectors

# A maximal request under this facade's limits: MAX_INPUTS inputs of TEST_MAX_TOKENS tokens (the export's
# longest input) = MAX_INPUTS / TEST_MAX_BATCH full Triton calls of TEST_MAX_BATCH x TEST_MAX_TOKENS tokens.
MAX_INPUTS = 16 * TEST_MAX_BATCH
CALL_TOKENS = TEST_MAX_BATCH * TEST_MAX_TOKENS
IN_FLIGHT = 2  # the default triton_calls_in_flight
# Wide: the shared CPUs make every time noisy; the bound checked is a multiple of the measured slice.
MARGIN = 4.0
WORDS = [
    "river",
    "stone",
    "quiet",
    "market",
    "lantern",
    "orbit",
    "velvet",
    "harbor",
    "thunder",
    "maple",
    "circuit",
    "ember",
    "glacier",
]


@pytest.fixture(scope="module")
def fair(model_repository: Path, triton: Any, logs_dir: Path) -> Iterator[Facade]:
    from devtools.launch import launch_facade

    env = {
        "QWEN3_EMBED_MAX_BATCH_INPUTS": str(MAX_INPUTS),
        "QWEN3_EMBED_MAX_REQUEST_TOKENS": str(MAX_INPUTS * TEST_MAX_TOKENS),
        "QWEN3_EMBED_TOKEN_BUDGET": str(CALL_TOKENS),
        "QWEN3_EMBED_TRITON_CALLS_IN_FLIGHT": str(IN_FLIGHT),
        "QWEN3_EMBED_DRAIN_SECONDS": "2",
    }
    with launch_facade(model_repository, triton.grpc_url, logs_dir, env=env) as running:
        yield running


def long_texts(model_dir: Path, count: int) -> list[str]:
    """`count` distinct texts of exactly TEST_MAX_TOKENS tokens with the EOS (the longest valid input)."""
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    out = []
    for k in range(count):
        words = [WORDS[(i * (k + 3) + k) % len(WORDS)] + str(i % 7) for i in range(TEST_MAX_TOKENS)]
        lo, hi = 1, len(words)
        while lo < hi:  # the most words whose tokens fit TEST_MAX_TOKENS - 1 (the EOS is the last)
            mid = (lo + hi + 1) // 2
            n = len(tok.encode(" ".join(words[:mid]), add_special_tokens=False).ids)
            lo, hi = (mid, hi) if n <= TEST_MAX_TOKENS - 1 else (lo, mid - 1)
        text = " ".join(words[:lo])
        assert len(tok.encode(text, add_special_tokens=False).ids) > TEST_MAX_TOKENS - 8
        out.append(text)
    return out


def triton_calls(base_url: str) -> float:
    """Triton calls the facade made at the longest bucket (its metrics)."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    pattern = rf'^qwen3_embed_triton_requests_total\{{bucket="{TEST_MAX_TOKENS}"\}} (\S+)$'
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_maximal_request_delays_a_short_one_by_about_one_call(
    fair: Facade, dev_model_dir: Path, reference: Any
) -> None:
    distinct = long_texts(dev_model_dir, 4)
    big_inputs = [distinct[i % len(distinct)] for i in range(MAX_INPUTS)]
    short = ["what is the capital of France?"]
    with grpc.insecure_channel(fair.target, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = fair.stub(channel)

        def embed(inputs: list[str]) -> tuple[pb.EmbedResponse, float]:
            start = time.perf_counter()
            response = stub.Embed(pb.EmbedRequest(inputs=inputs), timeout=300)
            return response, time.perf_counter() - start

        embed(short)  # warm both paths
        # The slice: one full Triton call (TEST_MAX_BATCH inputs of TEST_MAX_TOKENS tokens) alone, median of 3.
        slice_s = statistics.median(embed(big_inputs[:TEST_MAX_BATCH])[1] for _ in range(3))
        alone_s = statistics.median(embed(short)[1] for _ in range(3))

        done: dict[str, float] = {}
        results: dict[str, pb.EmbedResponse] = {}

        def run_big() -> None:
            results["big"], _ = embed(big_inputs)
            done["big"] = time.perf_counter()

        before = triton_calls(fair.base_url)
        big_thread = threading.Thread(target=run_big)
        big_started = time.perf_counter()
        big_thread.start()
        # The short request arrives once the big one's calls are running (its first call is counted when it
        # returns: by then the rest of its chunks are queued).
        deadline = time.monotonic() + 120
        while triton_calls(fair.base_url) <= before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "big" not in done, "the big request finished before the short one was sent: raise MAX_INPUTS"
        results["short"], short_s = embed(short)
        done["short"] = time.perf_counter()
        big_thread.join(300)
        big_s = done["big"] - big_started

    bound_s = (IN_FLIGHT + 1) * slice_s + alone_s
    print(
        f"\nslice (one {TEST_MAX_BATCH}x{TEST_MAX_TOKENS} call alone) {slice_s * 1000:.0f} ms; short alone "
        f"{alone_s * 1000:.0f} ms; maximal request ({MAX_INPUTS}x{TEST_MAX_TOKENS} tokens, "
        f"{MAX_INPUTS // TEST_MAX_BATCH} calls) {big_s * 1000:.0f} ms; short beside it {short_s * 1000:.0f} ms; "
        f"bound (in-flight calls + 1) x slice + alone = {bound_s * 1000:.0f} ms"
    )
    assert done["short"] < done["big"], "the short request waited for the whole maximal request"
    assert short_s <= MARGIN * bound_s, f"short request took {short_s:.2f} s, bound {bound_s:.2f} s"

    # Both answered correctly, every row its own request's: against the reference.
    ref = reference.encode(distinct + short)
    big_vectors = vectors(results["big"])
    assert big_vectors.shape[0] == MAX_INPUTS
    for i, row in enumerate(big_vectors):
        assert cosine(row, ref[i % len(distinct)]) >= 0.99999, f"big request row {i}"
    assert cosine(vectors(results["short"])[0], ref[-1]) >= 0.99999
