"""Triton Python-backend model: runs the exported model.onnx with ONNX Runtime.

Written by `qwen3-embed export --backend python`. Triton's dynamic batcher hands execute() several requests
(up to max_batch_size rows). Rows of the same sequence length are concatenated and run in sub-runs of at most
`max_batch_tokens` padded tokens (rows x width; a single longer row runs alone), so an instance's memory follows
the token budget, not max_batch_size times it. One response per request, in order; a bad request, or a failed
sub-run, errors only the requests whose rows it held.

Memory (measured with ONNX Runtime 1.32 on CPU; bounds in export/memory.py): the CPU arena grows by what is
asked (kSameAsRequested, not the default doubling), memory patterns are off (every batch has another shape),
and after a run estimated above `ort_arena_keep_bytes` the arena is given back to the OS. ORT's defaults kept a
run's whole peak for the life of the process (2.2 GB after one [8, 2048] dev-model run); giving the arena back
after every run returned it (13-36 MB kept) but cost up to 24 % CPU time per token (a wider model), running
without an arena 21-28 %; so small runs, the common case, keep their memory and only large ones release it.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# The model-repository contract (service/contract.py: INPUT_IDS, ATTENTION_MASK, EMBEDDING, RERANK_LOGITS, the
# ModelKind values and the Param keys). This file runs in Triton's Python stub without the `service` package, so
# it repeats the names it uses; tests/unit/test_contract.py checks each one equals the contract's.
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
EMBEDDING = "embedding"
RERANK_LOGITS = "logits"
KIND_EMBEDDING = "embedding"
KIND_RERANKER = "reranker"
PARAM_KIND = "kind"
PARAM_EMBEDDING_ROWS = "embedding_rows"
PARAM_ORT_INTRA_OP_THREADS = "ort_intra_op_threads"
PARAM_MAX_BATCH_TOKENS = "max_batch_tokens"
PARAM_ACTIVATION_BYTES_PER_TOKEN = "activation_bytes_per_token"
PARAM_ACTIVATION_BYTES_PER_SCORE = "activation_bytes_per_score"
PARAM_ORT_ARENA_KEEP_BYTES = "ort_arena_keep_bytes"

# Triton metrics (its metrics port) a test or an operator reads to see the budget at work.
METRIC_RUNS = "qwen3_embed_ort_runs_total"
METRIC_RUN_TOKENS_MAX = "qwen3_embed_ort_run_tokens_max"
METRIC_BATCH_TOKENS_MAX = "qwen3_embed_batch_tokens_max"
METRIC_ARENA_RELEASES = "qwen3_embed_ort_arena_releases_total"


class _NoMetric:
    """Stands in where this Triton's Python backend has no custom metrics."""

    def increment(self, value):
        pass

    def set(self, value):
        pass


class TritonPythonModel:
    # The graph's output: the config's output name (embedding, or logits for a reranker).
    output_name = EMBEDDING

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}

        def number(key):
            return int(params.get(key, "0") or 0)

        # One template for both kinds: the output is the config's (export writes the graph's output there); an
        # older config without outputs is named by its kind (absent = embedding).
        outputs = config.get("output") or []
        by_kind = {KIND_EMBEDDING: EMBEDDING, KIND_RERANKER: RERANK_LOGITS}
        self.output_name = outputs[0]["name"] if outputs else by_kind.get(params.get(PARAM_KIND, ""), EMBEDDING)
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        # Basic optimisations, as export verification ran the graph: the fused graph already holds ORT's fused
        # ops (EXTENDED/ALL add nothing to it), and the eager graph is verified at this level only.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        threads = number(PARAM_ORT_INTRA_OP_THREADS)
        if threads > 0:
            options.intra_op_num_threads = threads
        # Shapes change with every batch: a cached allocation pattern per shape only holds memory.
        options.enable_mem_pattern = False
        # An fp16 graph on CPU: each weight is cast to fp32 at run time; priority order casts it just before
        # its MatMul instead of all weights first (fp32 copies of every weight at once).
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        self._same_as_requested_cpu_arena(options)
        providers = ["CPUExecutionProvider"]
        device_id = int(args.get("model_instance_device_id", 0))
        if (
            args.get("model_instance_kind") == "GPU"
            and "CUDAExecutionProvider" in ort.get_available_providers()
        ):
            cuda = {"device_id": device_id, "arena_extend_strategy": "kSameAsRequested"}
            providers = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
        self.session = ort.InferenceSession(
            os.path.join(version_dir, "model.onnx"), options, providers=providers
        )
        # ONNX Runtime falls back to the CPU with only a warning when its CUDA provider cannot load (a library
        # missing from the loader's path): a GPU instance on the CPU is a failed load, not a slow model.
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise pb_utils.TritonModelException(
                "a GPU instance, but ONNX Runtime runs this graph on "
                f"{self.session.get_providers()} (available: {ort.get_available_providers()}): install "
                "onnxruntime-gpu and put its CUDA libraries on LD_LIBRARY_PATH, or set the instance kind to CPU"
            )
        self.embedding_rows = number(PARAM_EMBEDDING_ROWS)
        self.max_batch_tokens = number(PARAM_MAX_BATCH_TOKENS)
        self.bytes_per_token = number(PARAM_ACTIVATION_BYTES_PER_TOKEN)
        self.bytes_per_score = number(PARAM_ACTIVATION_BYTES_PER_SCORE)
        self.keep_bytes = number(PARAM_ORT_ARENA_KEEP_BYTES)
        # Shrinking an arena the session does not have fails the run, so name the GPU only when it is used.
        arenas = ["cpu:0"]
        if "CUDAExecutionProvider" in self.session.get_providers():
            arenas.append(f"gpu:{device_id}")
        self.release = ort.RunOptions()
        self.release.add_run_config_entry("memory.enable_memory_arena_shrinkage", ";".join(arenas))
        self.largest_run = 0
        self.largest_batch = 0
        self._create_metrics(args)

    @staticmethod
    def _same_as_requested_cpu_arena(options):
        """The default CPU arena doubles when it grows: one [8, 2048] dev-model run left it at 2.2 GB, against
        1.6 GB with kSameAsRequested. Set on a process-wide arena (this stub process holds one session)."""
        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
        except Exception as exc:  # an older ONNX Runtime: the session keeps its own (doubling) arena
            pb_utils.Logger.log_warn(f"CPU arena stays ONNX Runtime's default: {exc}")
            return
        options.add_session_config_entry("session.use_env_allocators", "1")

    def _create_metrics(self, args):
        self.families = []
        self.runs = self.run_tokens_max = self.batch_tokens_max = self.arena_releases = _NoMetric()
        if not hasattr(pb_utils, "MetricFamily"):
            return
        try:
            self._register_metrics(args)
        except Exception as exc:  # metrics are for operators: never a reason to fail the model's load
            pb_utils.Logger.log_warn(f"no custom metrics: {exc}")

    def _register_metrics(self, args):
        labels = {"model": args["model_name"], "instance": args["model_instance_name"]}

        def metric(name, kind, description):
            family = pb_utils.MetricFamily(name=name, description=description, kind=kind)
            self.families.append(family)
            return family.Metric(labels=labels)

        counter, gauge = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE
        self.runs = metric(METRIC_RUNS, counter, "ONNX Runtime runs (a Triton batch may take several)")
        self.run_tokens_max = metric(METRIC_RUN_TOKENS_MAX, gauge, "Largest rows x width of one ONNX Runtime run")
        self.batch_tokens_max = metric(
            METRIC_BATCH_TOKENS_MAX, gauge, "Largest rows x width of one width in one Triton batch"
        )
        self.arena_releases = metric(METRIC_ARENA_RELEASES, counter, "Runs after which the arena was given back")

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
            ids = pb_utils.get_input_tensor_by_name(request, INPUT_IDS).as_numpy()
            mask = pb_utils.get_input_tensor_by_name(request, ATTENTION_MASK).as_numpy()
            problem = self._check(ids, mask)
            if problem:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(problem))
                continue
            groups.setdefault(ids.shape[1], []).append((i, ids, mask))
        for width, members in groups.items():
            self._run_group(width, members, responses)
        return responses

    def _run_group(self, width, members, responses):
        """Every request of one width: sub-runs of at most max_batch_tokens padded tokens, split back."""
        ids = np.concatenate([m[1] for m in members]).astype(np.int64, copy=False)
        mask = np.concatenate([m[2] for m in members]).astype(np.int64, copy=False)
        total = ids.shape[0]
        if total * width > self.largest_batch:
            self.largest_batch = total * width
            self.batch_tokens_max.set(self.largest_batch)
        step = total if self.max_batch_tokens <= 0 else max(1, self.max_batch_tokens // max(width, 1))
        out = None
        failures = []  # (first row, end row, message) of sub-runs that raised
        for start in range(0, total, step):
            stop = min(total, start + step)
            try:
                part = self._run(ids[start:stop], mask[start:stop])
            except Exception as exc:  # reported to the requests it held rather than failing the whole batch
                failures.append((start, stop, f"inference failed: {exc}"))
                continue
            if out is None:
                out = np.empty((total, part.shape[1]), dtype=np.float32)
            out[start:stop] = part
        start = 0
        for i, rows, _ in members:
            stop = start + rows.shape[0]
            problem = next((m for s, e, m in failures if s < stop and e > start), None)
            if problem or out is None:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(problem or "inference failed"))
            else:
                tensor = pb_utils.Tensor(self.output_name, out[start:stop])
                responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
            start = stop

    def _run(self, ids, mask):
        rows, width = ids.shape
        tokens = rows * width
        # The export's estimate of this run's activations (export/memory.py); 0 coefficients: never release.
        estimate = tokens * self.bytes_per_token + tokens * width * self.bytes_per_score
        release = self.keep_bytes > 0 and estimate > self.keep_bytes
        feed = {INPUT_IDS: ids, ATTENTION_MASK: mask}
        out = self.session.run([self.output_name], feed, self.release if release else None)
        self.runs.increment(1)
        if release:
            self.arena_releases.increment(1)
        if tokens > self.largest_run:
            self.largest_run = tokens
            self.run_tokens_max.set(tokens)
        return np.asarray(out[0], dtype=np.float32)

    def finalize(self):
        self.session = None
        # Triton wants each Metric gone before its MetricFamily.
        self.runs = self.run_tokens_max = self.batch_tokens_max = self.arena_releases = None
        self.families = []
