"""The device runs of the GPU kit, in order, as `run` tool calls to paste (after `prepare`):

    python -m devtools.gpu_kit.driver [--commit HASH]

Runs 1..N each carry one part (.gpukit/part-NN) and check every part so far: run 2 onwards also proves the
machine kept the earlier ones (a machine given back starts bare: then begin again at run 1). Run 1 also starts
building the random-weight checkpoints in the background (CPU work that needs nothing from the kit), so the
last run does not pay for it. Run N installs, runs the preflight and `measure`. Issue them back to back: the
machine goes back after ~30 s idle.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devtools.gpu_kit.parts import KIT_DIR, read_manifest

# The run tool's limits (device README): one command's text, one command's time.
MAX_COMMAND_CHARS = 2000
MAX_TIMEOUT_S = 600
# What the last run leaves measure after install + preflight, inside MAX_TIMEOUT_S (seconds; margin for the
# files coming back).
MEASURE_DEADLINE_S = 500
ENV = "export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH=$PWD/.gpukit/site:$PWD"
WORK = "/tmp/gpukit-work"
# measure.PRESETS' GPU presets (measure imports numpy; this module stays on the standard library + the kit's own).
PRESETS = ("h200", "h200-int4")


@dataclass(frozen=True)
class DeviceRun:
    title: str
    command: str
    carry: tuple[str, ...]
    timeout_s: int

    def as_call(self) -> str:
        args = {"command": self.command, "carry": list(self.carry), "timeout_s": self.timeout_s}
        return json.dumps(args)


def measure_command(commit: str, preset: str = "h200", extra: str = "") -> str:
    """measure with what is left of the run's time (T0 set at the command's start), its log and Triton's log
    copied to $OUT (what comes back: at most 8 files)."""
    return (
        f"python3 -m devtools.gpu_kit.measure --provider cuda --preset {preset} --commit {commit}{extra} "
        f"--work {WORK} --out-dir $OUT --set budget_s=$(( {MEASURE_DEADLINE_S} - $(date +%s) + T0 )) "
        f"2>&1 | tee $OUT/measure.log; rc=$?; tail -c 4000000 {WORK}/logs/triton.log > $OUT/triton.log; exit $rc"
    )


def plan(root: Path, commit: str, preset: str = "h200") -> list[DeviceRun]:
    manifest = read_manifest(root)
    n = len(manifest.parts)
    runs = []
    for k, part in enumerate(manifest.parts, start=1):
        check = f"python3 -m devtools.gpu_kit.install check --upto {k}"
        if k == 1:
            # The machine's facts; then the checkpoints' CPU-only build, which outlives the run (setsid), with the
            # early wheels (the offline tokenizer) installed from part 1. If that fails, the log says so in runs
            # 2..N-1 and measure builds the checkpoints itself in run N.
            check = (
                f"nvidia-smi -L; python3 -V; df -h /tmp | tail -1; mkdir -p {WORK}; "
                "python3 -m devtools.gpu_kit.install early; PYTHONPATH=$PWD/.gpukit/early:$PWD "
                f"setsid nohup python3 -m devtools.gpu_kit.measure --prebuild --preset {preset} --work {WORK} "
                f"> {WORK}/prebuild.log 2>&1 < /dev/null & {check}"
            )
        elif k < n:  # how the background build is doing
            check = f"tail -n 3 {WORK}/prebuild.log; {check}"
        if k < n:
            runs.append(DeviceRun(f"run {k}/{n}: carry part {k}", check, (part.folder,), 120))
            continue
        command = (
            f"set -o pipefail; T0=$(date +%s); {ENV}; {check} && "
            "python3 -m devtools.gpu_kit.install install && python3 -m devtools.gpu_kit.install preflight --cuda && "
            + measure_command(commit, preset)
        )
        runs.append(DeviceRun(f"run {k}/{n}: carry part {k}, install, measure", command, (part.folder,), 600))
    return runs


def rerun_measure(commit: str, preset: str = "h200") -> DeviceRun:
    """Only while the machine is still warm (the install under .gpukit/site survives; a fresh one has none); the
    exports the failed run finished are kept (a 4B export costs minutes)."""
    command = f"set -o pipefail; T0=$(date +%s); {ENV}; " + measure_command(commit, preset, extra=" --reuse-exports")
    return DeviceRun("rerun: measure alone (machine still warm)", command, (), MAX_TIMEOUT_S)


def head_commit(root: Path) -> str:
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd())
    parser.add_argument("--commit", default=None, help="the commit measured (default: HEAD of ROOT)")
    parser.add_argument("--preset", choices=PRESETS, default="h200",
                        help="measure's preset: h200 (issue 22, the 4B service first), h200-int4 (issue 27 alone)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    commit = args.commit or head_commit(root)
    runs = plan(root, commit, args.preset)
    rerun = rerun_measure(commit, args.preset)
    for run in [*runs, rerun]:
        if len(run.command) > MAX_COMMAND_CHARS:
            raise SystemExit(f"{run.title}: command of {len(run.command)} characters, over {MAX_COMMAND_CHARS}")
    print(f"{len(runs)} device runs, back to back (parts in {KIT_DIR}/; results come back in $OUT):\n")
    for run in runs:
        print(f"# {run.title}\nrun {run.as_call()}\n")
    print("# if measure failed but the machine is still warm (within ~30 s):")
    print(f"run {rerun.as_call()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
