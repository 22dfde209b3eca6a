"""Reranking throughput, same run, same documents: the service's gRPC Rerank (dev reranker exported into Triton,
facade in front) against the reference, transformers' Qwen3ForCausalLM in process (the official usage: left-padded
batches of prefix + body + suffix, sigmoid(yes - no) at the last position).

    .venv/bin/python -m benchmarks.rerank [--requests 12] [--documents 16] [--concurrency 2] [--threads 2]

Prints a markdown table (documents/s, tokens/s, ratio) and writes benchmarks/results/rerank-<time>.json. The
scores of both systems are compared too (max |diff|), so a fast but wrong path cannot pass for a result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "bench" / "rerank"
RERANKER = "qwen3_reranker"


def prepare(max_tokens: int) -> tuple[Path, Path]:
    """The dev reranker checkpoint and its export (cached)."""
    from rich.console import Console

    from export.dev_model import build_dev_reranker
    from export.exporter import ExportOptions, run_export
    from export.triton_config import RepoSettings

    ckpt, repo = WORK / "dev-reranker", WORK / "model_repository"
    if not (ckpt / "config.json").exists():
        build_dev_reranker(ckpt)
    if not (repo / RERANKER / "config.pbtxt").exists():
        settings = RepoSettings(name=RERANKER, max_input_tokens=max_tokens)
        run_export(ExportOptions(model=str(ckpt), output=repo, repo=settings, verify_long_tokens=512), Console())
    return ckpt, repo


def workload(requests: int, documents: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """Queries of 8-32 tokens, documents of 32-512 tokens (log-uniform), as retrieval candidates are."""
    from devtools.bench.workload import LengthSpec, make_texts

    rng = random.Random(seed)
    queries = make_texts(LengthSpec(8, 32), requests, seed)
    docs = make_texts(LengthSpec(32, 512), requests * documents, seed + 1)
    rng.shuffle(docs)
    return [(q, docs[i * documents : (i + 1) * documents]) for i, q in enumerate(queries)]


class Reference:
    """transformers' CausalLM with the official template; one left-padded batch per request."""

    def __init__(self, ckpt: Path, max_tokens: int, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from service.contract import RERANK_PREFIX, RERANK_SUFFIX

        torch.set_num_threads(threads)
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(str(ckpt), padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32, attn_implementation="sdpa")
        self.model.eval()
        self.prefix = self.tok.encode(RERANK_PREFIX, add_special_tokens=False)
        self.suffix = self.tok.encode(RERANK_SUFFIX, add_special_tokens=False)
        self.yes, self.no = self.tok.convert_tokens_to_ids("yes"), self.tok.convert_tokens_to_ids("no")
        self.body_max = max_tokens - len(self.prefix) - len(self.suffix)

    def scores(self, query: str, documents: list[str]) -> tuple[np.ndarray, int]:
        from service.contract import rerank_body

        bodies = [rerank_body("", query, d) for d in documents]
        enc = self.tok(bodies, add_special_tokens=False, truncation=True, max_length=self.body_max)
        seqs = [self.prefix + ids + self.suffix for ids in enc["input_ids"]]
        batch = self.tok.pad({"input_ids": seqs}, padding=True, return_tensors="pt")
        with self.torch.no_grad():
            # logits_to_keep=1: the LM head for the last position only. The model card's snippet computes every
            # position's [vocab] logits and keeps the last; that would only make the reference slower.
            logits = self.model(**batch, use_cache=False, logits_to_keep=1).logits[:, -1, :]
        diff = (logits[:, self.yes] - logits[:, self.no]).double().numpy()
        return 1.0 / (1.0 + np.exp(-diff)), sum(len(s) for s in seqs)


async def run_service(target: str, work: list[tuple[str, list[str]]], concurrency: int) -> dict[str, Any]:
    import grpc

    from service.gen.embedding.v1 import embedding_pb2 as pb
    from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc

    scores: list[np.ndarray] = [np.empty(0)] * len(work)
    tokens = 0
    queue = list(enumerate(work))
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)

        async def worker() -> None:
            nonlocal tokens
            while queue:
                i, (query, docs) = queue.pop(0)
                reply = await stub.Rerank(pb.RerankRequest(query=query, documents=docs), timeout=600)
                out = np.empty(len(docs))
                for r in reply.results:
                    out[r.index] = r.score
                scores[i] = out
                tokens += reply.usage.prompt_tokens

        await stub.Rerank(pb.RerankRequest(query="warm", documents=["up"]), timeout=600)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": tokens, "scores": scores}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--documents", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the in-process reference")
    parser.add_argument("--max-tokens", type=int, default=8192)
    args = parser.parse_args(argv)

    from devtools.launch import launch_facade
    from service.triton.runtime import start_triton

    ckpt, repo = prepare(args.max_tokens)
    work = workload(args.requests, args.documents)
    docs = sum(len(d) for _, d in work)
    logs = WORK / "logs"
    triton = start_triton(repo, logs / "triton.log")
    try:
        env = {"QWEN3_EMBED_MODELS": RERANKER, "QWEN3_EMBED_WORKERS": "1"}
        with launch_facade(repo, triton.grpc_url, logs, env=env) as facade:
            service = asyncio.run(run_service(facade.target, work, args.concurrency))
    finally:
        triton.stop()
    reference = Reference(ckpt, args.max_tokens, args.threads)
    reference.scores(*work[0])  # warm-up, as the service had
    start = time.perf_counter()
    ref_scores, ref_tokens = [], 0
    for query, documents in work:
        s, n = reference.scores(query, documents)
        ref_scores.append(s)
        ref_tokens += n
    ref_seconds = time.perf_counter() - start
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(service["scores"], ref_scores, strict=True))

    rows = [
        ("service gRPC Rerank (Triton, ORT fused graph)", service["seconds"], service["tokens"]),
        (f"transformers CausalLM in process (sdpa, {args.threads} threads)", ref_seconds, ref_tokens),
    ]
    print(f"\n{args.requests} requests x {args.documents} documents (32-512 tokens), concurrency {args.concurrency}")
    print("| system | documents/s | tokens/s | ratio to the reference |\n|---|---|---|---|")
    for name, seconds, tokens in rows:
        print(f"| {name} | {docs / seconds:.1f} | {tokens / seconds:.0f} | {ref_seconds / seconds:.2f} |")
    print(f"\nworst |score difference| service vs reference: {worst:.2e}")
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "args": vars(args),
        "documents": docs,
        "service": {"seconds": service["seconds"], "tokens": service["tokens"]},
        "reference": {"seconds": ref_seconds, "tokens": ref_tokens},
        "ratio": ref_seconds / service["seconds"],
        "worst_score_diff": worst,
    }
    out = ROOT / "benchmarks" / "results" / f"rerank-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
