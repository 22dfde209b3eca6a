"""The default length-bucket ladder (service/contract.py): its shape and the padding it guarantees, and
the one ladder export writes, warms up and the facade uses."""

from __future__ import annotations

import math
import random

import pytest

from service.contract import (
    BUCKET_ALIGN,
    BUCKETS_PER_OCTAVE,
    SMALLEST_BUCKET,
    ModelFacts,
    Param,
    default_buckets,
)
from service.pipeline.batching import bucket_for, worst_padding
from service.pipeline.inference import resolve_buckets

MAX_TOKENS = (16, 17, 100, 300, 512, 8192, 32768, 40960)
LADDER_512 = [16, 24, 32, 40, 48, 56, 64, 80, 88, 104, 128, 152, 184, 216, 256, 304, 360, 432, 512]


@pytest.mark.parametrize("max_tokens", MAX_TOKENS)
@pytest.mark.parametrize("per_octave", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("align", [1, 8, 16])
def test_ladder_is_monotonic_aligned_and_ends_at_max(max_tokens: int, per_octave: int, align: int) -> None:
    ladder = default_buckets(max_tokens, per_octave=per_octave, align=align)
    assert ladder[-1] == max_tokens
    assert ladder == sorted(set(ladder))  # strictly ascending
    assert all(b % align == 0 for b in ladder[:-1])  # only max_tokens itself may be off the grid
    assert ladder[0] >= 1


@pytest.mark.parametrize("max_tokens", MAX_TOKENS)
@pytest.mark.parametrize("per_octave", [1, 2, 3, 4])
@pytest.mark.parametrize("align", [1, 8, 16])
def test_every_length_pads_less_than_the_bound(max_tokens: int, per_octave: int, align: int) -> None:
    """The guarantee of the docstring: bucket(n) < 2**(1/per_octave) * (n + align) for n >= smallest."""
    ladder = default_buckets(max_tokens, per_octave=per_octave, align=align)
    r = 2 ** (1 / per_octave)
    for n in range(min(SMALLEST_BUCKET, max_tokens), max_tokens + 1):
        assert bucket_for(n, ladder) < r * (n + align), (n, bucket_for(n, ladder))


def test_powers_of_two_are_one_per_octave() -> None:
    assert default_buckets(512, per_octave=1) == [16, 32, 64, 128, 256, 512]
    assert default_buckets(300, per_octave=1) == [16, 32, 64, 128, 256, 300]
    assert default_buckets(8, per_octave=1) == [8]


def test_the_default_ladder() -> None:
    """4 rungs per octave on multiples of 8 (docs/benchmarks.md, "Length buckets")."""
    assert (BUCKETS_PER_OCTAVE, BUCKET_ALIGN, SMALLEST_BUCKET) == (4, 8, 16)
    assert default_buckets(512) == LADDER_512
    ladder = default_buckets(8192)
    assert len(ladder) == 35 and {16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192} <= set(ladder)
    # Past 64 tokens no single input pads more than 1.25x; the powers of two allow almost 2x.
    assert worst_padding(ladder, 65) < 1.25
    assert worst_padding(default_buckets(8192, per_octave=1), 65) == pytest.approx(8192 / 4097)


def test_mixed_lengths_pad_under_1_15() -> None:
    """The acceptance figure, offline: log-uniform 8..512 tokens (the bench's "mixed") pads <= 1.15."""
    rng = random.Random(0)
    lengths = [round(math.exp(rng.uniform(math.log(8), math.log(512)))) for _ in range(20000)]
    for max_tokens in (512, 8192, 32768):
        ladder = default_buckets(max_tokens)
        padded = sum(bucket_for(n, ladder) for n in lengths)
        assert padded / sum(lengths) <= 1.15
    old = default_buckets(8192, per_octave=1)
    assert sum(bucket_for(n, old) for n in lengths) / sum(lengths) > 1.3


def test_worst_padding() -> None:
    assert worst_padding([16, 32, 64]) == 16.0  # one token in a 16-wide bucket
    assert worst_padding([16, 32, 64], shortest=16) == pytest.approx(64 / 33)  # 33 tokens in 64
    assert worst_padding([10], shortest=10) == 1.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        default_buckets(0)
    with pytest.raises(ValueError):
        default_buckets(512, per_octave=0)


def test_resolve_prefers_settings_then_the_export_then_the_default() -> None:
    exported = (16, 48, 512)
    assert resolve_buckets([64, 8, 1000], 512, exported) == [8, 64, 512]
    assert resolve_buckets([], 512, exported) == [16, 48, 512]
    assert resolve_buckets([], 512) == default_buckets(512)
    assert resolve_buckets([], 256, exported) == [16, 48, 256]  # never past the model's max


def test_length_buckets_parameter_round_trips_and_is_optional() -> None:
    facts = ModelFacts(
        source_model="m",
        hidden_size=64,
        max_input_tokens=512,
        embedding_rows=100,
        pad_id=1,
        eos_id=1,
        length_buckets=tuple(default_buckets(512)),
    )
    params = facts.to_parameters()
    assert params[Param.LENGTH_BUCKETS] == ",".join(str(b) for b in LADDER_512)
    assert ModelFacts.from_parameters(params) == facts
    # Exports from before the key: no parameter, an empty ladder (the facade computes the default).
    old = ModelFacts.from_parameters({k: v for k, v in params.items() if k != Param.LENGTH_BUCKETS})
    assert old.length_buckets == () and Param.LENGTH_BUCKETS not in old.to_parameters()
    for bad in ((16, 16, 512), (16, 256), (0, 512)):
        with pytest.raises(ValueError, match="length_buckets"):
            ModelFacts.from_parameters({**params, Param.LENGTH_BUCKETS: ",".join(map(str, bad))})


def _facts(max_tokens: int) -> ModelFacts:
    return ModelFacts(
        source_model="m", hidden_size=64, max_input_tokens=max_tokens, embedding_rows=100, pad_id=0, eos_id=0
    )


def test_export_writes_the_ladder_it_warms_up() -> None:
    """config.pbtxt's length_buckets is the ladder the facade would compute anyway, and the warm-up lengths
    are rungs of it: facade and warm-up agree."""
    from export.triton_config import (
        WARMUP_MAX_TOKENS,
        RepoSettings,
        build_config,
        default_warmup_lengths,
        length_ladder,
    )
    from service.contract import ModelInfo

    for max_tokens in (512, 8192, 32768):
        ladder = length_ladder(RepoSettings(), max_tokens)
        assert ladder == default_buckets(max_tokens)
        warm = default_warmup_lengths(ladder)
        # Rungs of the ladder, one per octave to 8192 (or max tokens): the powers of two, as before.
        assert set(warm) <= set(ladder) and warm == default_buckets(min(max_tokens, WARMUP_MAX_TOKENS), per_octave=1)
        repo = RepoSettings(max_input_tokens=max_tokens, warmup_lengths=tuple(warm))
        cfg = build_config(repo, _facts(max_tokens))
        info = ModelInfo.from_triton_config(cfg)
        assert list(info.length_buckets) == ladder
        assert resolve_buckets([], max_tokens, info.length_buckets) == ladder
        assert [w.name for w in cfg.model_warmup] == [f"warmup_len_{n}" for n in warm]
    assert default_warmup_lengths(default_buckets(5000)) == [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 5000]
    assert default_warmup_lengths([100, 150, 210, 300, 9000]) == [100, 210, 300]  # the largest rung <= 8192 too
    # A ladder given to export: capped at, and ending with, max tokens.
    custom = RepoSettings(length_buckets=(64, 256, 4096))
    assert length_ladder(custom, 1024) == [64, 256, 1024]
    assert ModelInfo.from_triton_config(build_config(custom, _facts(1024))).length_buckets == (64, 256, 1024)
