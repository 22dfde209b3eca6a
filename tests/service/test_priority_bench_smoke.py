"""A seconds-long smoke run of benchmarks/priority_backfill.py against the session's real Triton: the harness
runs both modes end to end and reports every figure. Correctness of the harness only: no timing is asserted."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def test_priority_backfill_smoke(model_repository: Path, triton: Any, tmp_path: Path) -> None:
    from benchmarks.priority_backfill import MODEL, run, table

    modes = run(
        model_repository,
        triton.grpc_url,
        tmp_path,
        rows=300,
        rate=20.0,
        seconds=1.0,
        index_start_s=0.0,
        direct_model=MODEL,
    )
    assert [m.name for m in modes] == ["classes on", "classes off"]
    for mode in modes:
        assert mode.interactive_errors == 0
        assert mode.alone_p99_ms > 0 and mode.solo_rows_per_s > 0 and mode.beside_rows_per_s > 0
        assert mode.beside_samples >= 1 and not math.isnan(mode.beside_p99_ms)
        assert set(mode.as_dict()) >= {"p99_ratio", "backfill_share", "beside_p99_ms"}
        # --direct: Triton's own p99, alone and beside the backfill (every call answered: errors above are 0)
        assert mode.direct_alone_p99_ms is not None and mode.direct_alone_p99_ms > 0
        assert mode.direct_beside_p99_ms is not None and mode.direct_beside_p99_ms > 0
    assert (tmp_path / "out.parquet").exists()
    text = table(modes, 300, 20.0)
    assert text.count("\n| classes o") == 2 and "rows/s" in text and "Triton direct p99" in text
