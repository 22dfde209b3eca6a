"""int8 / uint8 packing: byte for byte sentence-transformers' quantize_embeddings (the reference) given the fixed
range [-1, 1], independent of the other vectors of a batch, and refused for unnormalised vectors."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers.quantization import quantize_embeddings

from service.errors import ServiceError
from service.pipeline.encoding import check_encoding, int8_ranges, pack
from service.pipeline.params import Encoding
from tests.oracles import unpack

PRECISION = {Encoding.INT8: "int8", Encoding.UINT8: "uint8"}


def unit_rows(rng: np.random.Generator, rows: int, dims: int) -> np.ndarray:
    v = rng.standard_normal((rows, dims)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("encoding", [Encoding.INT8, Encoding.UINT8])
@pytest.mark.parametrize(("rows", "dims"), [(1, 1), (5, 32), (7, 64), (3, 1024)])
def test_bytes_equal_sentence_transformers_with_the_fixed_range(encoding: Encoding, rows: int, dims: int) -> None:
    rng = np.random.default_rng(rows * 31 + dims)
    v = unit_rows(rng, rows, dims)
    # Values on and next to the bucket edges and the ends of the range, where rounding differences would show.
    edges = (np.arange(256, dtype=np.float32) * np.float32(2 / 255) - 1).astype(np.float32)
    v[0, : min(dims, 4)] = np.array([-1.0, 1.0, 0.0, -0.0], dtype=np.float32)[: min(dims, 4)]
    extra = np.concatenate([edges, np.nextafter(edges, np.float32(2)), np.nextafter(edges, np.float32(-2))])
    v = np.concatenate([v, np.resize(extra, (len(extra) // dims + 1, dims)).astype(np.float32)])
    expected = quantize_embeddings(v, precision=PRECISION[encoding], ranges=int8_ranges(dims))
    packed = pack(v, encoding)
    assert [len(b) for b in packed] == [dims] * len(v)
    assert b"".join(packed) == expected.tobytes()


@pytest.mark.parametrize("encoding", [Encoding.INT8, Encoding.UINT8])
def test_a_vector_does_not_depend_on_its_batch(encoding: Encoding) -> None:
    rng = np.random.default_rng(5)
    v = unit_rows(rng, 6, 64)
    alone = [pack(v[i : i + 1], encoding)[0] for i in range(len(v))]
    assert pack(v, encoding) == alone
    # Unlike quantize_embeddings without ranges, which calibrates on the batch it is given.
    calibrated = quantize_embeddings(v, precision=PRECISION[encoding])
    assert calibrated[:3].tobytes() != quantize_embeddings(v[:3], precision=PRECISION[encoding]).tobytes()


def test_unpacked_values_are_within_a_bucket() -> None:
    v = unit_rows(np.random.default_rng(9), 4, 64)
    for encoding in (Encoding.INT8, Encoding.UINT8):
        back = np.stack([unpack(b, encoding, 64) for b in pack(v, encoding)])
        assert np.abs(back - v).max() <= 1 / 255 + 1e-6


def test_int8_needs_normalised_vectors() -> None:
    for encoding in (Encoding.INT8, Encoding.UINT8):
        check_encoding(encoding, True)
        with pytest.raises(ServiceError) as err:
            check_encoding(encoding, False)
        assert err.value.param == "normalize" and "[-1, 1]" in err.value.message
    for encoding in (Encoding.FLOAT, Encoding.FLOAT16, Encoding.BINARY, Encoding.UBINARY):
        check_encoding(encoding, False)
