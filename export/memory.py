"""Expected ONNX Runtime memory of one model instance running an exported graph (eager or fused attention).

One ORT run of `rows` x `width` padded tokens needs about
    FIXED + rows*width * TOKEN_FACTOR*(hidden + intermediate)*4 + rows*heads*width^2 * SCORE_FACTOR*4 bytes:
the per-layer activations (hidden states, MLP) grow with the tokens, the attention scores with width^2.

Calibration (ONNX Runtime 1.32 CPU, one intra-op thread, the settings model.py uses: CPU arena with
kSameAsRequested, memory patterns off, arena shrunk after the run; one fresh process per shape; peak RSS minus
the RSS of the loaded session). Three random-weight configs: the dev model (hidden 64, 4 heads, intermediate
128), a wider one (hidden 512, 8 heads, intermediate 1536) and one at 0.6B width (hidden 1024, 16 heads,
intermediate 3072, 2 layers); shapes [16,16] .. [1,8192], up to 16,384 tokens:
- width >= 2048: peak = 3.0-3.2 x the fp32 score bytes rows*heads*width^2*4 (scores, masked scores and softmax
  output are alive together): dev [4,4096] 3,230 MB, wide [4,4096] 6,608 MB, 0.6B-wide [1,4096] 3,408 MB
  -> SCORE_FACTOR 3.25;
- width <= 128: wide [128,128] 780 MB, 0.6B-wide [64,128] 832 MB = 4.1-5.3 x rows*width*(hidden+intermediate)*4
  -> TOKEN_FACTOR 5.5, plus FIXED 32 MiB.
The formula is 10-20 % above the measured peak at long widths and up to 2x above at middle widths (a bound,
not a prediction). Weights count once at their precision; the stub and ORT libraries add RUNTIME_BYTES (loaded
RSS minus weights: 78-93 MB for the three configs). fp16/bf16 graphs keep the fp32 factors: the attention
softmax runs in fp32, and an over-estimate is the safe side. So do quantized graphs with float16 activations
(--quant-activations fp16): their activations are counted at 4 bytes like every float16 graph's, their weights at
the written graph's size.

The fused graph (export/fused_graph.py, GroupQueryAttention) has no score matrix; one run needs about
    FIXED + weights + rows*width * FUSED_TOKEN_FACTOR*(hidden + intermediate + (heads + 2*kv_heads)*head_dim)*4
bytes. Calibration (ONNX Runtime 1.32 CPU, one intra-op thread, memory patterns off, one fresh process per
length, batch 1; peak RSS minus the loaded session's RSS): dev model (per-token width 448) 1k-4k 34 MB, 8k 53 MB,
16k 106 MB, 32k 211 MB; a wider config (hidden 512, 8/4 heads, head_dim 64, intermediate 1536: width 3072;
310 MB of fp32 weights) 1k-4k 280 MB, 8k 373 MB, 16k 750 MB. The flat part up to ~4k tokens is about one copy
of the weights (ORT's first run), hence the weights term; the slope is 3.0 (dev) and 2.3-2.9 (wide) x the
width's fp32 bytes per token -> FUSED_TOKEN_FACTOR 3.5 (the bound is 16 % above dev at 32k, 35 % above wide
at 16k).

Rerankers (a Qwen3-Reranker graph ending in two LM-head rows instead of the embedding) use the same formulas: the
layers are the same, the head adds a [batch, 2] output, and `parameter_count` (Checkpoint.parameter_count) counts
the backbone plus those 2 rows, never the full vocab x hidden head.
"""


from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.contract import Precision

MIB = 1024**2
SCORE_FACTOR = 3.25
TOKEN_FACTOR = 5.5
FIXED_BYTES = 32 * MIB
RUNTIME_BYTES = 96 * MIB
FUSED_TOKEN_FACTOR = 3.5


@dataclass(frozen=True)
class PeakMemory:
    weight_bytes: int
    bytes_per_token: int  # per padded token of a run
    bytes_per_score: int  # per cell of a row's [width, width] attention matrix (all heads); 0 when fused
    run_fixed_bytes: int = FIXED_BYTES  # per run, whatever its size

    @classmethod
    def for_model(
        cls,
        config: Mapping[str, Any],
        parameter_count: int,
        precision: Precision,
        fused: bool = False,
        graph_bytes: int = 0,
    ) -> PeakMemory:
        """`graph_bytes`: the written graph's size, the weights' size when they are not parameter_count x itemsize
        (int8 / int4: packed blocks plus scales, float embeddings)."""
        weight_bytes = graph_bytes or parameter_count * precision.itemsize
        if fused:
            heads, kv_heads = int(config["num_attention_heads"]), int(config["num_key_value_heads"])
            head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
            width = (
                int(config["hidden_size"]) + int(config["intermediate_size"]) + (heads + 2 * kv_heads) * head_dim
            )
            return cls(
                weight_bytes=weight_bytes,
                bytes_per_token=int(FUSED_TOKEN_FACTOR * width * 4),
                bytes_per_score=0,
                run_fixed_bytes=FIXED_BYTES + weight_bytes,
            )
        width = int(config["hidden_size"]) + int(config["intermediate_size"])
        return cls(
            weight_bytes=weight_bytes,
            bytes_per_token=int(TOKEN_FACTOR * width * 4),
            bytes_per_score=int(SCORE_FACTOR * int(config["num_attention_heads"]) * 4),
        )

    def run_bytes(self, rows: int, width: int) -> int:
        return (
            self.run_fixed_bytes + rows * width * self.bytes_per_token + rows * width * width * self.bytes_per_score
        )

    def worst_run(self, max_batch_tokens: int, max_input_tokens: int, max_batch_size: int) -> tuple[int, int]:
        """(rows, width) of the largest run an instance may make. model.py gives each run at most
        max_batch_tokens // width rows (at least one; max_batch_tokens 0 = no split, Triton's whole batch)."""
        best = (0, 1, 1)
        for width in range(1, max_input_tokens + 1):
            rows = max_batch_size if max_batch_tokens <= 0 else max(1, min(max_batch_size, max_batch_tokens // width))
            need = self.run_bytes(rows, width)
            if need > best[0]:
                best = (need, rows, width)
        return best[1], best[2]

    def instance_bytes(self, max_batch_tokens: int, max_input_tokens: int, max_batch_size: int) -> int:
        rows, width = self.worst_run(max_batch_tokens, max_input_tokens, max_batch_size)
        return RUNTIME_BYTES + self.weight_bytes + self.run_bytes(rows, width)


def gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB"


def quantized_weight_bytes(
    vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, head_dim: int, intermediate: int,
    bits: int, block_size: int = 32, embedding_itemsize: int = 2, positions: int = 0, float_itemsize: int = 4,
) -> int:
    """Bytes of an int8 / int4 fused graph's weights, before it is written: the embedding table (float16 as the
    export writes it; `embedding_itemsize` 4 for a float32 table, as exports before that), per layer the four
    linear layers (merged q/k/v, o, merged gate/up, down) as MatMulNBits: `bits` per weight, a float32 scale and a
    `bits`-wide zero point (a byte per two for 4 bits) per block of `block_size` input rows, and the float32
    rotary cos / sin caches of `positions` rows (the export writes the config's max_position_embeddings: 16 MiB
    at 0.6B, 3 % of its int4 graph; 20 MiB at 4B / 8B). Norms are left out (under 0.1 % at 0.6B and up). The
    chart's int8 / int4 sizes (helm/qwen3-embedding/templates/_helpers.tpl weightsGiB) are this, rounded up to
    0.01 GiB, for the real 0.6B / 4B / 8B configs (tests/deployment/test_helm.py pins them). `float_itemsize`:
    bytes of a scale and of a rotary cache value, 4 as written here; 2 in a graph with float16 activations
    (--quant-activations fp16: scales and caches in float16). The chart counts the float32 figure for both: for
    float16 activations it is high by 4-5 % (int8) and 6-8 % (int4) at 0.6B / 4B / 8B, the safe side."""
    q, kv = heads * head_dim, kv_heads * head_dim
    shapes = [(hidden, q + 2 * kv), (q, hidden), (hidden, 2 * intermediate), (intermediate, hidden)]
    per_layer = 0
    for k, n in shapes:
        blocks = -(-k // block_size)
        codes = n * blocks * (block_size * bits // 8)
        zero_points = n * (-(-blocks * bits // 8))
        per_layer += codes + n * blocks * float_itemsize + zero_points
    rotary = 2 * positions * (head_dim // 2) * float_itemsize
    return vocab * hidden * embedding_itemsize + layers * per_layer + rotary
