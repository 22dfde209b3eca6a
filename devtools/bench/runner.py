"""Closed loop (N clients, each sends its next request when the last one returns) and open loop
(requests start on a Poisson clock at R per second whatever the server does: latency then includes
queueing, which a closed loop hides)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence, Sized
from dataclasses import dataclass
from typing import Any

from devtools.bench.clients import Outcome
from devtools.bench.stats import Sample, Summary, summarize
from devtools.bench.workload import approx_tokens

# A request is any sized batch (texts, or pre-tokenized chunks for direct Triton): len() = inputs.
SendFn = Callable[[Any], Awaitable[Outcome]]


@dataclass(frozen=True)
class LoadSpec:
    concurrency: int = 1  # closed loop
    rate: float = 0.0  # > 0: open loop at this many requests per second
    requests: int = 0  # 0: no count limit
    duration_s: float = 0.0  # 0: no time limit
    seed: int = 0

    def __post_init__(self) -> None:
        if self.requests <= 0 and self.duration_s <= 0:
            raise ValueError("bound the run with requests > 0 or duration > 0")
        if self.rate <= 0 and self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")


@dataclass
class RunResult:
    summary: Summary
    samples: list[Sample]
    first_error: str = ""


async def _one(
    send: SendFn, texts: Sized, t0: float, samples: list[Sample], errors: list[str]
) -> None:
    start = time.perf_counter()
    try:
        outcome = await send(texts)
    except Exception as exc:  # a client-side failure is recorded, not allowed to stop the run
        outcome = Outcome("CLIENT_ERROR", detail=f"{type(exc).__name__}: {exc}")
    end = time.perf_counter()
    tokens = outcome.tokens or (sum(approx_tokens(str(t)) for t in texts) if isinstance(texts, list) else 0)
    samples.append(Sample(start - t0, end - start, outcome.status, len(texts), tokens))
    if outcome.status != "OK" and not errors:
        errors.append(f"{outcome.status}: {outcome.detail}")


async def run_load(send: SendFn, requests: Sequence[Sized], spec: LoadSpec) -> RunResult:
    """Sends requests[i % len(requests)] in order until the count or the duration is reached."""
    if not requests:
        raise ValueError("no requests to send")
    samples: list[Sample] = []
    errors: list[str] = []
    limit = spec.requests if spec.requests > 0 else None
    t0 = time.perf_counter()
    deadline = t0 + spec.duration_s if spec.duration_s > 0 else None
    issued = 0

    def next_index() -> int | None:
        nonlocal issued
        if (limit is not None and issued >= limit) or (
            deadline is not None and time.perf_counter() >= deadline
        ):
            return None
        issued += 1
        return issued - 1

    if spec.rate > 0:
        rng = random.Random(spec.seed)
        tasks: set[asyncio.Task[None]] = set()
        next_start = t0
        while (i := next_index()) is not None:
            delay = next_start - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(_one(send, requests[i % len(requests)], t0, samples, errors))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_start += rng.expovariate(spec.rate)
        if tasks:
            await asyncio.gather(*tasks)
    else:

        async def worker() -> None:
            while (i := next_index()) is not None:
                await _one(send, requests[i % len(requests)], t0, samples, errors)

        await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
    wall = time.perf_counter() - t0
    return RunResult(summarize(samples, wall), samples, errors[0] if errors else "")
