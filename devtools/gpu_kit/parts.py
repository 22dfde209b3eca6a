"""Wheels <-> parts: one byte stream (the wheels end to end, in manifest order) cut into parts of at most
`capacity` bytes, and back. Standard library only: the GPU machine runs this before anything is installed.

Why one stream rather than whole wheels per part: onnxruntime-gpu alone is ~4 parts' worth, and packing the
stream fills every part but the last, so the count of parts (device runs) is the least possible:
ceil(total / capacity)."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

MANIFEST = "manifest.json"
CHUNK = "chunk.bin"
# Where prepare puts everything (ignored by git): wheels/ (downloads, never carried) and part-NN/ (one a run).
KIT_DIR = ".gpukit"
_BLOCK = 1 << 20


class KitError(RuntimeError):
    """A part or wheel that does not match the manifest, or one that is missing: never installed."""


@dataclass(frozen=True)
class WheelEntry:
    name: str  # the wheel's file name
    bytes: int
    sha256: str


@dataclass(frozen=True)
class PartEntry:
    folder: str  # relative to the repository root, e.g. .gpukit/part-01
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    wheels: tuple[WheelEntry, ...]
    parts: tuple[PartEntry, ...]
    capacity: int
    # The first `early` wheels of the stream: needed before the whole kit is there (device run 1), so they sit
    # at the front, inside the first part(s).
    early: int = 0

    @property
    def total_bytes(self) -> int:
        return sum(w.bytes for w in self.wheels)

    def to_json(self) -> str:
        return json.dumps(
            {"capacity": self.capacity, "early": self.early, "wheels": [asdict(w) for w in self.wheels],
             "parts": [asdict(p) for p in self.parts]},
            indent=1,
        ) + "\n"  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(
            wheels=tuple(WheelEntry(**w) for w in data["wheels"]),
            parts=tuple(PartEntry(**p) for p in data["parts"]),
            capacity=int(data["capacity"]),
            early=int(data.get("early", 0)),
        )

    def parts_for(self, wheels: int) -> int:
        """How many parts (from the first) hold the first `wheels` wheels of the stream."""
        end = sum(w.bytes for w in self.wheels[:wheels])
        return max(1, part_count(end, self.capacity)) if end else 0


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def part_count(total: int, capacity: int) -> int:
    """Parts (device runs) needed for `total` bytes at `capacity` bytes a part."""
    if capacity <= 0:
        raise ValueError(f"a part must hold at least one byte, got capacity {capacity}")
    return max(1, -(-total // capacity))


def part_folder(index: int, kit_dir: str = KIT_DIR) -> str:
    """1-based: .gpukit/part-01, ... (two digits keep `ls` in run order)."""
    return f"{kit_dir}/part-{index:02d}"


def split(
    wheels: list[Path], capacity: int, root: Path, kit_dir: str = KIT_DIR, early: tuple[str, ...] = ()
) -> Manifest:
    """Writes root/<kit_dir>/part-NN/{chunk.bin, manifest.json} (the same manifest in every part, so any run
    can check what it carries) and returns the manifest. Old part folders are removed first. Wheels whose file
    name starts with one of `early` come first in the stream (assemble(first=...) takes them alone)."""

    def is_early(p: Path) -> bool:
        return p.name.startswith(early) if early else False

    wheels = sorted(wheels, key=lambda p: (not is_early(p), p.name))
    if len({w.name for w in wheels}) != len(wheels):
        raise KitError("two wheels with the same file name")
    entries = tuple(WheelEntry(w.name, w.stat().st_size, sha256_of(w)) for w in wheels)
    total = sum(e.bytes for e in entries)
    count = part_count(total, capacity)
    for old in (root / kit_dir).glob("part-*"):
        shutil.rmtree(old)
    folders = [root / part_folder(i + 1, kit_dir) for i in range(count)]
    for folder in folders:
        folder.mkdir(parents=True)
    # One handle that moves from part to part as each fills (closed in `finally`), hence no `with`.
    index, written, out = 0, 0, open(folders[0] / CHUNK, "wb")  # noqa: SIM115
    try:
        for wheel in wheels:
            with open(wheel, "rb") as f:
                while block := f.read(min(_BLOCK, capacity - written)):
                    out.write(block)
                    written += len(block)
                    if written == capacity and index + 1 < count:
                        out.close()
                        index, written = index + 1, 0
                        out = open(folders[index] / CHUNK, "wb")  # noqa: SIM115
    finally:
        out.close()
    parts = tuple(
        PartEntry(part_folder(i + 1, kit_dir), (f / CHUNK).stat().st_size, sha256_of(f / CHUNK))
        for i, f in enumerate(folders)
    )
    manifest = Manifest(entries, parts, capacity, early=sum(map(is_early, wheels)))
    for folder in folders:
        (folder / MANIFEST).write_text(manifest.to_json())
    return manifest


def read_manifest(root: Path, kit_dir: str = KIT_DIR) -> Manifest:
    """The manifest of the first part folder present; every other present part's copy must be the same."""
    copies = sorted((root / kit_dir).glob(f"part-*/{MANIFEST}"))
    if not copies:
        raise KitError(f"no part folder with a {MANIFEST} under {root / kit_dir}")
    text = copies[0].read_text()
    for other in copies[1:]:
        if other.read_text() != text:
            raise KitError(f"{other} differs from {copies[0]}: parts of two different prepare runs")
    return Manifest.from_json(text)


def check_part(root: Path, part: PartEntry) -> None:
    """Raises KitError when the part's chunk is missing or not the one the manifest names."""
    chunk = root / part.folder / CHUNK
    if not chunk.is_file():
        raise KitError(f"missing part {part.folder} ({chunk} not found): was the machine given back between runs?")
    size = chunk.stat().st_size
    if size != part.bytes:
        raise KitError(f"part {part.folder}: {size} bytes, the manifest says {part.bytes}")
    digest = sha256_of(chunk)
    if digest != part.sha256:
        raise KitError(f"part {part.folder}: sha256 {digest}, the manifest says {part.sha256} (corrupted in transfer?)")


def check_parts(root: Path, manifest: Manifest, upto: int | None = None) -> None:
    """Parts 1..upto (all by default), in order."""
    for part in manifest.parts[: len(manifest.parts) if upto is None else upto]:
        check_part(root, part)


def assemble(root: Path, manifest: Manifest, out_dir: Path, first: int | None = None) -> list[Path]:
    """Every part checked, then the stream cut back into the wheels under out_dir, each checked (size, sha256).
    With `first`, only the first `first` wheels, from the parts that hold them (the others need not be there)."""
    wheels = manifest.wheels if first is None else manifest.wheels[:first]
    parts = manifest.parts if first is None else manifest.parts[: manifest.parts_for(first)]
    for part in parts:
        check_part(root, part)
    out_dir.mkdir(parents=True, exist_ok=True)
    chunks = [root / p.folder / CHUNK for p in parts]
    written: list[Path] = []
    ci, reader = 0, open(chunks[0], "rb")  # noqa: SIM115 (moves from part to part, closed in `finally`)
    try:
        for wheel in wheels:
            target = out_dir / wheel.name
            left = wheel.bytes
            with open(target, "wb") as out:
                while left:
                    block = reader.read(min(_BLOCK, left))
                    if not block:  # this chunk is used up: the wheel goes on in the next part
                        reader.close()
                        ci += 1
                        if ci == len(chunks):
                            raise KitError(f"the parts end before {wheel.name} does")
                        reader = open(chunks[ci], "rb")  # noqa: SIM115
                        continue
                    out.write(block)
                    left -= len(block)
            digest = sha256_of(target)
            if digest != wheel.sha256:
                raise KitError(f"{wheel.name}: sha256 {digest} after reassembly, the manifest says {wheel.sha256}")
            written.append(target)
        if first is None and (reader.read(1) or ci + 1 != len(chunks)):
            raise KitError("bytes left over in the parts after the last wheel")
    finally:
        reader.close()
    return written
