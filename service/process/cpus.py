"""CPU sizing: how many CPUs this process may use, and how many worker processes `--workers 0` (auto) means."""

from __future__ import annotations

import math
import os
from pathlib import Path
from urllib.parse import urlsplit

CGROUP_ROOT = Path("/sys/fs/cgroup")
MAX_AUTO_WORKERS = 8
LOOPBACK_HOSTS = ("localhost", "::1")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs the cgroup's quota allows (v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us); None: no quota."""
    try:
        fields = (root / "cpu.max").read_text().split()
    except OSError:
        fields = []
    if fields:
        if fields[0] == "max":
            return None
        try:
            return int(fields[0]) / int(fields[1] if len(fields) > 1 else 100_000)
        except (ValueError, ZeroDivisionError):
            return None
    for sub in ("cpu", "cpu,cpuacct"):
        try:
            quota = int((root / sub / "cpu.cfs_quota_us").read_text())
            period = int((root / sub / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may run on (affinity), fewer when a cgroup quota allows fewer (rounded down)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_limit(root)
    if quota is not None:
        cpus = min(cpus, math.floor(quota))
    return max(1, cpus)


def triton_shares_cpus(triton_url: str) -> bool:
    """Triton runs on this host: started by the facade (no URL) or reached over loopback."""
    if not triton_url:
        return True
    host = urlsplit("//" + triton_url.split("://", 1)[-1]).hostname or ""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def resolve_workers(workers: int, root: Path = CGROUP_ROOT, triton_local: bool = False) -> int:
    """settings.workers, or for 0 (auto) one per usable CPU, at most MAX_AUTO_WORKERS. Half as many when
    Triton runs on the same CPUs (`triton_local`, no cgroup CPU quota): on 2 cores with Triton beside them,
    2 workers served 0.69-0.86x what 1 did (docs/benchmarks.md). A quota means a container whose CPUs are the
    facade's own (Triton in its own container, e.g. a sidecar with its own limit): all of them."""
    if workers > 0:
        return workers
    cpus = usable_cpus(root)
    if triton_local and cgroup_cpu_limit(root) is None:
        cpus = max(1, cpus // 2)
    return min(MAX_AUTO_WORKERS, cpus)
