"""export/verify.py's retrieval check (quantized exports): overlap@10 of each query's top-10 documents and the
Spearman correlation of its scores, quantized graph vs fp32 reference; pure, on made-up vectors."""

from __future__ import annotations

import numpy as np

from export.verify import retrieval_agreement, spearman


def vectors(seed: int, rows: int, width: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, width))


def test_the_same_vectors_agree_fully_and_pass() -> None:
    q, d = vectors(0, 5), vectors(1, 40)
    got = retrieval_agreement((q, d), (q * 3.0, d), min_overlap=0.9, min_spearman=0.99)  # scale does not matter
    assert got.overlap_at_10 == 1.0 and got.worst_overlap_at_10 == 1.0
    assert got.spearman > 0.999999 and got.passed


def test_unrelated_documents_fail_the_gate() -> None:
    q, d = vectors(0, 5), vectors(1, 40)
    got = retrieval_agreement((q, d), (q, vectors(2, 40)), min_overlap=0.8, min_spearman=0.9)
    assert got.overlap_at_10 < 0.6 and got.spearman < 0.5 and not got.passed


def test_small_noise_keeps_most_neighbours() -> None:
    q, d = vectors(0, 8), vectors(1, 40)
    noisy = d + 0.05 * vectors(3, 40)
    got = retrieval_agreement((q, d), (q, noisy), min_overlap=0.8, min_spearman=0.9)
    assert 0.8 <= got.overlap_at_10 <= 1.0 and got.spearman > 0.95 and got.passed


def test_spearman_by_hand() -> None:
    # Ranks 0 1 2 3 vs 0 2 1 3: 1 - 6 * (1 + 1) / (4 * (16 - 1)) = 0.8; any monotone map keeps 1.0.
    a = np.array([0.1, 0.5, 0.7, 2.0])
    assert abs(spearman(a, np.array([1.0, 3.0, 2.0, 4.0])) - 0.8) < 1e-12
    assert abs(spearman(a, np.exp(a)) - 1.0) < 1e-12
