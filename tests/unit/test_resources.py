"""export/resources.py: the export's memory pre-check reads the container's cgroup limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from export import resources

GIB = 1024**3
HOST = 512 * GIB  # a big node: /proc/meminfo would wave a 48 GiB export through


@pytest.fixture(autouse=True)
def _big_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resources, "host_available_bytes", lambda: HOST)


def test_cgroup_v2_limit_wins_over_the_node(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text(f"{32 * GIB}\n")
    (tmp_path / "memory.current").write_text(f"{2 * GIB}\n")
    assert resources.cgroup_memory(tmp_path) == (32 * GIB, 2 * GIB)
    assert resources.available_memory_bytes(tmp_path) == 30 * GIB


def test_cgroup_v2_without_a_limit_falls_back_to_the_host(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("123\n")
    assert resources.cgroup_memory(tmp_path) is None
    assert resources.available_memory_bytes(tmp_path) == HOST


@pytest.mark.parametrize("nested", [True, False])
def test_cgroup_v1_limit(tmp_path: Path, nested: bool) -> None:
    base = tmp_path / "memory" if nested else tmp_path
    base.mkdir(exist_ok=True)
    (base / "memory.limit_in_bytes").write_text(str(16 * GIB))
    (base / "memory.usage_in_bytes").write_text(str(1 * GIB))
    assert resources.available_memory_bytes(tmp_path) == 15 * GIB


def test_cgroup_v1_unlimited_is_no_limit(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712")
    assert resources.available_memory_bytes(tmp_path) == HOST


def test_a_limit_above_the_node_is_capped_and_usage_over_the_limit_is_zero(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text(str(HOST * 2))
    assert resources.available_memory_bytes(tmp_path) == HOST
    (tmp_path / "memory.max").write_text(str(GIB))
    (tmp_path / "memory.current").write_text(str(2 * GIB))
    assert resources.available_memory_bytes(tmp_path) == 0


def test_no_cgroup_files_means_the_host(tmp_path: Path) -> None:
    assert resources.available_memory_bytes(tmp_path / "missing") == HOST


def test_the_real_host_figure_is_positive() -> None:
    import psutil

    assert psutil.virtual_memory().available > 0
