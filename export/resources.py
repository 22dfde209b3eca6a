"""Memory the export may use: the container's cgroup limit when there is one, else the host's.

`psutil.virtual_memory().available` reads /proc/meminfo, which inside a container reports the *node's*
memory: a pod limited to 32 GiB on a 512 GiB node would pass a 48 GiB pre-check and then be OOM-killed.
The cgroup's limit minus its current usage is what the kernel enforces, so that is what we report when a
limit is set (cgroup v2 `memory.max` / `memory.current`, cgroup v1 `memory.limit_in_bytes` /
`memory.usage_in_bytes`), capped by the host figure (a limit may exceed the node's memory).
"""

from __future__ import annotations

from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 reports "no limit" as a huge page-aligned number (PAGE_COUNTER_MAX * page size).
_V1_UNLIMITED = 1 << 60


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def cgroup_memory(root: Path = CGROUP_ROOT) -> tuple[int, int] | None:
    """(limit, usage) in bytes of the cgroup at `root`, or None when it sets no memory limit."""
    v2_limit = root / "memory.max"
    if v2_limit.exists():
        limit = _read_int(v2_limit)
        if limit is None:
            return None
        return limit, _read_int(root / "memory.current") or 0
    v1 = root / "memory"
    for base in (v1, root):
        limit = _read_int(base / "memory.limit_in_bytes")
        if limit is not None:
            if limit >= _V1_UNLIMITED:
                return None
            return limit, _read_int(base / "memory.usage_in_bytes") or 0
    return None


def host_available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def available_memory_bytes(root: Path = CGROUP_ROOT) -> int:
    """Bytes this process can still allocate: min(cgroup limit - usage, host available)."""
    host = host_available_bytes()
    cgroup = cgroup_memory(root)
    if cgroup is None:
        return host
    limit, usage = cgroup
    return max(0, min(limit - usage, host))
