"""The README and docs/ pages as the tests that run their commands read them: a page, a section of it by its
heading, the code blocks of a language, the shell lines that start with a command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = "README.md"
CLIENTS = "docs/clients.md"


def page(name: str) -> str:
    """A page by its path from the repository root (README.md, docs/clients.md, ...)."""
    return (ROOT / name).read_text()


def section(name: str, heading: str) -> str:
    """The text under `heading` (a whole heading line, e.g. "## Rerank") up to the next heading of the same or a
    higher level; headings inside code fences do not count."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = page(name).splitlines()
    start = lines.index(heading) + 1
    fence = False
    for end in range(start, len(lines)):
        line = lines[end]
        if line.startswith("```"):
            fence = not fence
        hashes = len(line) - len(line.lstrip("#"))
        if not fence and 0 < hashes <= level and line[hashes : hashes + 1] == " ":
            return "\n".join(lines[start:end])
    return "\n".join(lines[start:])


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def shell_lines(text: str, command: str) -> list[str]:
    """The lines of the text's sh blocks that run `command`, continuation lines joined."""
    lines = [ln.strip() for block in code_blocks(text, "sh") for ln in block.replace("\\\n", " ").splitlines()]
    return [ln for ln in lines if ln.startswith(f"{command} ")]
