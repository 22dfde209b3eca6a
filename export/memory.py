"""Expected ONNX Runtime memory of one model instance running the exported eager-attention graph.

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
softmax runs in fp32, and an over-estimate is the safe side.
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


@dataclass(frozen=True)
class PeakMemory:
    weight_bytes: int
    bytes_per_token: int  # per padded token of a run
    bytes_per_score: int  # per cell of a row's [width, width] attention matrix (all heads)

    @classmethod
    def for_model(cls, config: Mapping[str, Any], parameter_count: int, precision: Precision) -> PeakMemory:
        width = int(config["hidden_size"]) + int(config["intermediate_size"])
        return cls(
            weight_bytes=parameter_count * precision.itemsize,
            bytes_per_token=int(TOKEN_FACTOR * width * 4),
            bytes_per_score=int(SCORE_FACTOR * int(config["num_attention_heads"]) * 4),
        )

    def run_bytes(self, rows: int, width: int) -> int:
        return FIXED_BYTES + rows * width * self.bytes_per_token + rows * width * width * self.bytes_per_score

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
