"""The fused ONNX graph: Qwen3 built op by op from the checkpoint's weights, attention as ONNX Runtime's
com.microsoft.GroupQueryAttention (causal, grouped KV heads, rotary inside the kernel, memory linear in tokens).

Why built with onnx.helper rather than traced: the graph is a few dozen nodes per layer whose meaning can be read
and tested directly (no tracer freezing Python branches, no custom symbolic for an attention the tracer never
sees), and the contrib ops take exactly the tensors Qwen3 has. The weights come from the same loaded
transformers module the PyTorch reference runs, and cos/sin from its own rotary module, so rope variants and
head_dim != hidden / heads are taken as the checkpoint defines them.

Heads: the same layers end either with the embedding head (pooled -> final norm -> `embedding` [batch, hidden]) or,
for a Qwen3-Reranker, with the reranker head (pooled -> final norm -> MatMul with the LM head's rows for RERANK_LABELS
("no", "yes") only -> `logits` [batch, 2]); the full vocab x hidden LM head never enters the graph.

Padding: the graph wants RIGHT padding. Attention is causal, so padded positions after a row's last real token
never reach a real one; GroupQueryAttention gets each row's length (seqlens_k = length - 1) and positions start at
0 for every row. The pooled token is position length - 1, computed from the mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from export.onnx_graph import save_with_external_data
from service.contract import ATTENTION_MASK, EMBEDDING, INPUT_IDS, RERANK_LABELS, RERANK_LOGITS, Precision

MS_DOMAIN = "com.microsoft"
# Opset 17 for the standard ops: what the traced graph uses, and what Triton's ONNX Runtime builds accept.
OPSET = 17


class GraphBuilder:
    """Nodes and initializers of one graph; unique names for intermediate values. The initializers are written
    straight into the ModelProto that is returned: building a list and handing it to onnx.helper's make_graph and
    make_model copies every weight twice more (three copies of a 4B model's 8 GB)."""

    def __init__(self, precision: Precision) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.model = onnx.ModelProto()
        self.precision = precision
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def _initializer(self, name: str, data_type: int, dims: list[int], raw: bytes) -> None:
        tensor = self.model.graph.initializer.add()
        tensor.name, tensor.data_type, tensor.raw_data = name, data_type, raw
        tensor.dims.extend(dims)

    def weight(self, name: str, tensor: torch.Tensor, transpose: bool = False) -> str:
        t = tensor.detach().to("cpu")
        if transpose:
            t = t.t()
        t = t.to(getattr(torch, self.precision.dtype_name)).contiguous()
        if self.precision == Precision.BF16:
            # numpy has no bfloat16: store the raw 16-bit patterns.
            self._initializer(name, TensorProto.BFLOAT16, list(t.shape), t.view(torch.int16).numpy().tobytes())
        else:
            self.const(name, t.numpy())
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        array = np.ascontiguousarray(value)
        data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        self._initializer(name, data_type, list(array.shape), array.astype(array.dtype.newbyteorder("<")).tobytes())
        return name

    def node(
        self, op: str, inputs: list[str], hint: str, outputs: int = 1, domain: str = "", **attrs: Any
    ) -> list[str]:
        outs = [self.name(hint) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op), domain=domain, **attrs))
        return outs

    def one(self, op: str, inputs: list[str], hint: str, domain: str = "", **attrs: Any) -> str:
        return self.node(op, inputs, hint, 1, domain, **attrs)[0]


def rotary_cache(backbone: nn.Module, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [positions, head_dim / 2] from the model's own rotary module (what its attention uses)."""
    config: Any = backbone.config
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    probe = torch.zeros(1, 1, head_dim, dtype=torch.float32)
    position_ids = torch.arange(positions, dtype=torch.int64)[None]
    rotary: Any = backbone.rotary_emb
    with torch.no_grad():
        cos, sin = rotary(probe, position_ids)
    # transformers repeats the half-size table ([cos, cos]); the kernel takes one half (non-interleaved).
    return cos[0, :, : head_dim // 2].float(), sin[0, :, : head_dim // 2].float()


def pooled_position(b: GraphBuilder, last: str) -> str:
    """The position whose hidden state is the embedding: the last real token (length - 1; right padding).
    A function of its own so a test can break it and see verification refuse the export."""
    return last


@dataclass(frozen=True)
class RerankHead:
    """The reranker's head: the LM head's rows for RERANK_LABELS, in that order ([2, hidden]), and their ids."""

    rows: torch.Tensor
    token_ids: tuple[int, int]


def embedding_head(b: GraphBuilder, normed: str, hidden: int) -> onnx.ValueInfoProto:
    """The normed last-token state as float32 `embedding` [batch, hidden]."""
    b.nodes.append(helper.make_node("Cast", [normed], [EMBEDDING], name="to_fp32", to=TensorProto.FLOAT))
    return helper.make_tensor_value_info(EMBEDDING, TensorProto.FLOAT, ["batch", hidden])


def rerank_head(b: GraphBuilder, normed: str, head: RerankHead) -> onnx.ValueInfoProto:
    """The LM head restricted to RERANK_LABELS: normed [batch, hidden] x rows^T [hidden, 2] -> float32 `logits`
    [batch, 2] (the two logits the full head would give for those tokens, in the graph's precision)."""
    labels = len(RERANK_LABELS)
    if head.rows.shape[0] != labels:
        raise ValueError(f"the reranker head needs {labels} rows ({RERANK_LABELS}), got {tuple(head.rows.shape)}")
    weight = b.weight("rerank_head.weight", head.rows, transpose=True)
    logits = b.one("MatMul", [normed, weight], "rerank_logits")
    b.nodes.append(helper.make_node("Cast", [logits], [RERANK_LOGITS], name="to_fp32", to=TensorProto.FLOAT))
    return helper.make_tensor_value_info(RERANK_LOGITS, TensorProto.FLOAT, ["batch", labels])


def build_fused_graph(
    backbone: nn.Module, precision: Precision, max_positions: int, head: RerankHead | None = None
) -> onnx.ModelProto:
    """input_ids, attention_mask (int64 [batch, seq], right-padded) -> embedding float32 [batch, hidden], or with
    a reranker `head` -> logits float32 [batch, 2] (RERANK_LABELS order). `backbone` is the bare Qwen3Model (a
    reranker's: its causal LM's `.model`). The backbone's weights move into the graph: the module is spent
    afterwards (compute any reference with it first)."""
    config: Any = backbone.config
    heads, kv_heads = int(config.num_attention_heads), int(config.num_key_value_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    hidden = int(config.hidden_size)
    eps = float(config.rms_norm_eps)
    state = dict(backbone.state_dict())
    params = dict(backbone.named_parameters())
    b = GraphBuilder(precision)

    def take(key: str) -> torch.Tensor:
        """The weight `key`, handed over to the graph: the module lets go of it, so that its memory is freed
        once the graph holds its copy. Without this the module and the graph hold every weight at once: a 4B
        fp16 export was killed at 24 GiB while building the graph. The backbone is spent afterwards."""
        tensor = state.pop(key)
        if key in params:
            params[key].data = torch.empty(0, dtype=tensor.dtype)
        return tensor

    def rms(x: str, weight: str, hint: str) -> str:
        # stash_type 1: the mean of squares in fp32 whatever the activations' type (as transformers does).
        return b.one("SimplifiedLayerNormalization", [x, weight], hint, axis=-1, epsilon=eps, stash_type=1)

    def skip_rms(x: str, branch: str, weight: str, hint: str) -> tuple[str, str]:
        """The residual add x + branch and its RMSNorm in one com.microsoft.SkipSimplifiedLayerNormalization:
        (normed, sum). One pass over the hidden states instead of two; the sum is the new residual stream."""
        normed, total = b.name(hint), b.name(hint + "_sum")
        b.nodes.append(
            helper.make_node(
                "SkipSimplifiedLayerNormalization",
                [x, branch, weight],
                [normed, "", "", total],
                name=b.name("SkipSimplifiedLayerNormalization"),
                domain=MS_DOMAIN,
                epsilon=eps,
            )
        )
        return normed, total

    def linears(x: str, prefixes: list[str], hint: str) -> list[str]:
        """Projections of the same input as one MatMul over their concatenated weights, then Split: one larger
        GEMM instead of several (q/k/v, gate/up). Each output column is the same dot product either way."""
        weights = [take(f"{p}.weight") for p in prefixes]
        fused = torch.cat(weights, dim=0) if len(weights) > 1 else weights[0]
        key = f"{prefixes[0]}.weight" if len(prefixes) == 1 else "+".join(prefixes) + ".weight"
        out = b.one("MatMul", [x, b.weight(key, fused, transpose=True)], hint)
        biases = [take(f"{p}.bias") if f"{p}.bias" in state else None for p in prefixes]
        if any(t is not None for t in biases):
            full = [t if t is not None else torch.zeros(w.shape[0]) for t, w in zip(biases, weights, strict=True)]
            out = b.one("Add", [out, b.weight(key.removesuffix(".weight") + ".bias", torch.cat(full))], hint + "_b")
        if len(prefixes) == 1:
            return [out]
        sizes = b.const(b.name("sizes"), np.array([int(w.shape[0]) for w in weights], np.int64))
        return b.node("Split", [out, sizes], hint + "_split", outputs=len(prefixes), axis=-1)

    def per_head_rms(x: str, n: int, weight_key: str, hint: str) -> str:
        """Qwen3's q_norm / k_norm: RMSNorm over each head's head_dim values, before rotary."""
        split = b.one("Reshape", [x, b.const(b.name("shape"), np.array([0, 0, n, head_dim], np.int64))], hint)
        normed = rms(split, b.weight(weight_key, take(weight_key)), hint + "_n")
        return b.one("Reshape", [normed, b.const(b.name("shape"), np.array([0, 0, n * head_dim], np.int64))], hint)

    cos, sin = rotary_cache(backbone, max_positions)
    cos_name, sin_name = b.weight("rotary_cos", cos), b.weight("rotary_sin", sin)

    # Row lengths from the mask: GroupQueryAttention's seqlens_k (length - 1) and the pooled position.
    lengths = b.one("ReduceSum", [ATTENTION_MASK, b.const("axis1", np.array([1], np.int64))], "lengths", keepdims=0)
    last = b.one("Sub", [lengths, b.const("one", np.array(1, np.int64))], "last")
    seqlens_k = b.one("Cast", [last], "seqlens_k", to=TensorProto.INT32)
    shape = b.one("Shape", [INPUT_IDS], "ids_shape")
    width = b.one("Gather", [shape, b.const("idx1", np.array(1, np.int64))], "width", axis=0)
    total = b.one("Cast", [width], "total_len", to=TensorProto.INT32)

    x = b.one("Gather", [b.weight("embed_tokens.weight", take("embed_tokens.weight")), INPUT_IDS], "embed", axis=0)
    layers = int(config.num_hidden_layers)
    branch: str | None = None  # the previous layer's MLP output, added to x by this layer's first norm
    for i in range(layers):
        p = f"layers.{i}"
        ln1 = b.weight(f"{p}.input_layernorm.weight", take(f"{p}.input_layernorm.weight"))
        if branch is None:
            h = rms(x, ln1, f"l{i}_ln1")
        else:
            h, x = skip_rms(x, branch, ln1, f"l{i}_ln1")
        q, k, v = linears(h, [f"{p}.self_attn.{n}_proj" for n in "qkv"], f"l{i}_qkv")
        q = per_head_rms(q, heads, f"{p}.self_attn.q_norm.weight", f"l{i}_qn")
        k = per_head_rms(k, kv_heads, f"{p}.self_attn.k_norm.weight", f"l{i}_kn")
        attn = b.node(
            "GroupQueryAttention",
            [q, k, v, "", "", seqlens_k, total, cos_name, sin_name],
            f"l{i}_attn",
            outputs=3,
            domain=MS_DOMAIN,
            num_heads=heads,
            kv_num_heads=kv_heads,
            scale=float(head_dim) ** -0.5,
            do_rotary=1,
            rotary_interleaved=0,
        )[0]
        (o,) = linears(attn, [f"{p}.self_attn.o_proj"], f"l{i}_o")
        post = f"{p}.post_attention_layernorm.weight"
        h, x = skip_rms(x, o, b.weight(post, take(post)), f"l{i}_ln2")
        gate, up = linears(h, [f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj"], f"l{i}_gu")
        # SiLU(gate) = gate * sigmoid(gate): com.microsoft.QuickGelu with alpha 1, one pass instead of two.
        act = b.one("QuickGelu", [gate], f"l{i}_silu", domain=MS_DOMAIN, alpha=1.0)
        (branch,) = linears(b.one("Mul", [act, up], f"l{i}_gu"), [f"{p}.mlp.down_proj"], f"l{i}_down")
    if branch is not None:
        x = b.one("Add", [x, branch], "last_res")

    # Pool before the final norm (it is per token): row * width + pooled position in the flattened states.
    flat = b.one("Reshape", [x, b.const("flat_shape", np.array([-1, hidden], np.int64))], "flat")
    batch = b.one("Gather", [shape, b.const("idx0", np.array(0, np.int64))], "batch", axis=0)
    zero, step = b.const("zero", np.array(0, np.int64)), b.const("step", np.array(1, np.int64))
    rows = b.one("Range", [zero, batch, step], "rows")
    position = pooled_position(b, last)
    index = b.one("Add", [b.one("Mul", [rows, width], "row_start"), position], "pool_index")
    pooled = b.one("Gather", [flat, index], "pooled", axis=0)
    normed = rms(pooled, b.weight("norm.weight", take("norm.weight")), "final_norm")
    output = embedding_head(b, normed, hidden) if head is None else rerank_head(b, normed, head)

    model = b.model
    graph = model.graph
    graph.name = "qwen3_embedding_fused" if head is None else "qwen3_reranker_fused"
    graph.node.extend(b.nodes)
    graph.input.extend(
        [
            helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info(ATTENTION_MASK, TensorProto.INT64, ["batch", "sequence"]),
        ]
    )
    graph.output.append(output)
    model.opset_import.extend([helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)])
    model.producer_name = "qwen3-embed"
    model.ir_version = 8
    return model


def save_fused_graph(model: onnx.ModelProto, path: Path) -> Path:
    """model.onnx and its weights in one model.onnx.data beside it (the layout Triton's ONNX Runtime backend
    expects), whatever the size: ONNX Runtime maps an external data file, while a graph in one protobuf is parsed
    into the heap, embedding table and all, in every instance (`python -m benchmarks.quant_memory`, docs/export.md)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_with_external_data(model, path)
    return path
