"""Triton Python-backend model: runs the exported model.onnx with ONNX Runtime.

Written by `qwen3-embed export --backend python`. Triton's dynamic batcher hands execute() several
requests; requests of the same sequence length are concatenated into one ONNX Runtime run and split back,
one response per request, in order. A bad request gets its own error; the others still succeed.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        # Basic optimisations only: ORT's transformer fusions (O2+) do not support qwen3.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        threads = int(params.get("ort_intra_op_threads", "0") or 0)
        if threads > 0:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if (
            args.get("model_instance_kind") == "GPU"
            and "CUDAExecutionProvider" in ort.get_available_providers()
        ):
            device_id = int(args.get("model_instance_device_id", 0))
            providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        self.session = ort.InferenceSession(
            os.path.join(version_dir, "model.onnx"), options, providers=providers
        )
        self.embedding_rows = int(params.get("embedding_rows", "0") or 0)

    def _check(self, ids, mask):
        if ids.ndim != 2 or ids.shape != mask.shape:
            return f"input_ids {list(ids.shape)} and attention_mask {list(mask.shape)} must be equal [batch, seq]"
        if self.embedding_rows and ids.size and (ids.min() < 0 or ids.max() >= self.embedding_rows):
            return f"token id out of range [0, {self.embedding_rows})"
        if ids.size and (mask.sum(axis=1) == 0).any():
            return "every row needs at least one attended token"
        return None

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}
        for i, request in enumerate(requests):
            ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
            mask = pb_utils.get_input_tensor_by_name(request, "attention_mask").as_numpy()
            problem = self._check(ids, mask)
            if problem:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(problem))
                continue
            groups.setdefault(ids.shape[1], []).append((i, ids, mask))
        for members in groups.values():
            ids = np.concatenate([m[1] for m in members]).astype(np.int64, copy=False)
            mask = np.concatenate([m[2] for m in members]).astype(np.int64, copy=False)
            try:
                out = self.session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
            except Exception as exc:  # report to each caller rather than failing the whole batch silently
                for i, _, _ in members:
                    responses[i] = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(f"inference failed: {exc}")
                    )
                continue
            out = np.ascontiguousarray(out, dtype=np.float32)
            start = 0
            for i, rows, _ in members:
                part = out[start : start + rows.shape[0]]
                start += rows.shape[0]
                responses[i] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("embedding", part)])
        return responses

    def finalize(self):
        self.session = None
