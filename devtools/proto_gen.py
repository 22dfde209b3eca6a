"""Generates the Python stubs in service/gen from proto/ (`make proto`; a test fails when they are stale)."""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
GEN_ROOT = ROOT / "service" / "gen"
PROTOS = ["embedding/v1/embedding.proto"]


def generate(out_dir: Path) -> list[Path]:
    """Writes the stubs under out_dir and returns the generated files."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    files = []
    for path in sorted(out_dir.rglob("*.py*")):
        # Generated code imports `embedding.v1...`; the stubs live under service.gen.
        text = re.sub(
            r"^from embedding\.v1 import",
            "from service.gen.embedding.v1 import",
            path.read_text(),
            flags=re.M,
        )
        path.write_text(text)
        files.append(path)
    for package in {p.parent for p in files} | {out_dir / "embedding"}:
        init = package / "__init__.py"
        if not init.exists():
            init.write_text("")
            files.append(init)
    return files


def generated_snapshot(out_dir: Path) -> dict[str, str]:
    # Sources only: an import leaves __pycache__ beside them.
    files = (p for p in sorted(out_dir.rglob("*")) if p.is_file() and p.suffix in (".py", ".pyi"))
    return {str(p.relative_to(out_dir)): p.read_text() for p in files}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = generated_snapshot(Path(tmp))
    GEN_ROOT.mkdir(parents=True, exist_ok=True)
    (GEN_ROOT / "__init__.py").write_text('"""Generated from proto/ by `make proto`; do not edit."""\n')
    for rel, text in fresh.items():
        target = GEN_ROOT / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    print(f"wrote {len(fresh)} files under {GEN_ROOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
