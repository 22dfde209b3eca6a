"""The generated Python-backend model.py on the real Triton binary, with dynamic batching."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from service.triton.runtime import TritonProcess


def infer_inputs(ids: np.ndarray, mask: np.ndarray) -> list[grpcclient.InferInput]:
    inputs = [
        grpcclient.InferInput("input_ids", list(ids.shape), "INT64"),
        grpcclient.InferInput("attention_mask", list(mask.shape), "INT64"),
    ]
    inputs[0].set_data_from_numpy(ids)
    inputs[1].set_data_from_numpy(mask)
    return inputs


def test_dynamic_batch_returns_each_request_its_rows(triton: TritonProcess, model_repository: Path) -> None:
    session = ort.InferenceSession(str(model_repository / "qwen3_embedding" / "1" / "model.onnx"))
    rng = np.random.default_rng(0)
    requests = []
    for _ in range(48):
        ids = rng.integers(0, 150000, size=(int(rng.integers(1, 4)), 32), dtype=np.int64)
        real = 32 - int(rng.integers(0, 20))  # right padding, as the facade sends for the fused graph
        ids[:, real - 1] = 151643
        mask = np.ones_like(ids)
        mask[:, real:] = 0
        requests.append((ids, mask))

    async def run() -> tuple[list[np.ndarray], dict[str, int]]:
        client = aioclient.InferenceServerClient(triton.grpc_url)
        try:
            before = await client.get_inference_statistics("qwen3_embedding")
            results = await asyncio.gather(*[client.infer("qwen3_embedding", infer_inputs(i, m)) for i, m in requests])
            # Triton updates its statistics just after sending responses: poll briefly.
            rows = sum(i.shape[0] for i, _ in requests)
            for _ in range(50):
                after = await client.get_inference_statistics("qwen3_embedding")
                if after.model_stats[0].inference_count - before.model_stats[0].inference_count >= rows:
                    break
                await asyncio.sleep(0.1)
        finally:
            await client.close()
        s0, s1 = before.model_stats[0], after.model_stats[0]
        counts = {
            "inferences": s1.inference_count - s0.inference_count,
            "executions": s1.execution_count - s0.execution_count,
        }
        return [r.as_numpy("embedding") for r in results], counts

    outputs, counts = asyncio.run(run())
    for (ids, mask), out in zip(requests, outputs, strict=True):
        expected = session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
        assert out.shape == expected.shape
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert counts["inferences"] == sum(i.shape[0] for i, _ in requests)
    assert counts["executions"] < len(requests)  # requests were merged into batches


def test_bad_request_gets_its_own_error(triton: TritonProcess) -> None:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    ids = np.full((1, 16), 200000, dtype=np.int64)  # past the embedding table
    try:
        client.infer("qwen3_embedding", infer_inputs(ids, np.ones_like(ids)))
    except InferenceServerException as exc:
        assert "out of range" in str(exc)
    else:
        raise AssertionError("out-of-range ids were accepted")
    ok = np.full((1, 16), 5, dtype=np.int64)
    assert client.infer("qwen3_embedding", infer_inputs(ok, np.ones_like(ok))).as_numpy("embedding").shape == (1, 64)
