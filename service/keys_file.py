"""Reading the API keys file without blocking and without trusting half of it.

- Only a regular file is read (a symlink to one is fine: Kubernetes Secret volumes are symlinks). The path is
  checked with os.stat, then opened with O_NONBLOCK and checked again on the descriptor, so a FIFO, a socket
  or a device put at the path is refused at once instead of blocking the event loop (a FIFO froze the facade
  87 s) - and a swap between the two checks is caught by the second.
- At most MAX_BYTES are read.
- A file is complete only when it ends with a newline (or is empty): a writer that rewrites the file in
  place can be read halfway, and the half line would be a truncated key. Writers should write a new file and
  rename it over the old one (atomic: `mv`, a Kubernetes Secret's symlink swap); an unterminated last line
  is never a key.

A key may carry attributes after it, `name=value` separated by whitespace; the one known is `priority=bulk`
(or `priority=interactive`): the key's requests run in that class whatever they ask for (service/priority.py).
Anything else after a key makes the line a problem, never a key.

`parse` never raises: it returns the keys of every well-formed line and the problems, so the caller decides
what a bad file means (start-up: an error; a reload: see service/api/auth.py).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

MAX_BYTES = 1 << 20  # about 20,000 keys: far beyond any real file, small enough to read on the event loop


class KeysFileUnreadable(OSError):
    """The path is missing, unreadable, not a regular file, too large or not UTF-8."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_text(path: Path) -> str:
    """The whole file as text; raises KeysFileUnreadable, never blocks on what is not a regular file."""
    try:
        before = os.stat(path)
        if not stat.S_ISREG(before.st_mode):
            raise KeysFileUnreadable(f"the API keys file {path} is {_kind(before.st_mode)}, not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except KeysFileUnreadable:
        raise
    except OSError as exc:
        raise KeysFileUnreadable(f"cannot read the API keys file {path}: {exc.strerror or exc}") from None
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode):  # swapped after the first look
            raise KeysFileUnreadable(f"the API keys file {path} is {_kind(now.st_mode)}, not a regular file")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BYTES:
                raise KeysFileUnreadable(f"the API keys file {path} is larger than {MAX_BYTES} bytes")
    except KeysFileUnreadable:
        raise
    except OSError as exc:
        raise KeysFileUnreadable(f"cannot read the API keys file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise KeysFileUnreadable(f"the API keys file {path} is not UTF-8 text") from None


PRIORITIES = ("interactive", "bulk")  # service.priority.Priority's values


@dataclass
class Parsed:
    keys: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    pins: dict[str, str] = field(default_factory=dict)  # key -> the priority class it is pinned to


def parse(text: str, source: str) -> Parsed:
    """One key per line. Each line is stripped first, so an indented '# revoked: sk-old' stays a comment. A
    line holding whitespace inside is a problem (two keys, or a key and a note: never one key) unless all that
    follows the key is known attributes (`priority=bulk`), and so is an unterminated last line (the file may
    be half-written): neither gives a key."""
    out = Parsed()
    lines = text.split("\n")
    if lines[-1].strip():
        out.problems.append(
            f"{source} does not end with a newline: its last line (line {len(lines)}) may be half-written and "
            "is not taken as a key; write the whole file and rename it over the old one"
        )
    for number, line in enumerate(lines[:-1], 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        key, *attributes = entry.split()
        pin = None
        for attribute in attributes:
            name, _, value = attribute.partition("=")
            if name != "priority" or value not in PRIORITIES:
                break
            pin = value
        else:
            out.keys.append(key)
            if pin is not None:
                out.pins[key] = pin
            continue
        out.problems.append(
            f"line {number} of {source} is not a single key (it contains whitespace); the only attribute a key "
            f"may carry is priority={'|'.join(PRIORITIES)}"
        )
    return out
