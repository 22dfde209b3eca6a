"""The README as a quick start: short, its first curl near the top, its links alive, and its example model
names the ones `make serve MODEL=dev` serves (a model is served under its checkpoint directory's basename)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from export.cli import DEV_MODEL_DIR
from tests.doc_pages import README, ROOT, page, shell_lines

MAX_LINES = 200
FIRST_CURL_BY = 60


def test_readme_is_under_200_lines() -> None:
    assert len(page(README).splitlines()) < MAX_LINES


def test_the_first_curl_is_within_the_first_60_lines() -> None:
    lines = page(README).splitlines()
    first = next(i for i, line in enumerate(lines, start=1) if line.startswith("curl "))
    assert first <= FIRST_CURL_BY, first


def relative_links(name: str) -> list[str]:
    """Link targets of a page that point into this repository (no scheme), anchors cut off."""
    targets = re.findall(r"\]\(([^)\s]+)\)", page(name))
    return [t.split("#", 1)[0] for t in targets if "://" not in t and not t.startswith("#")]


def test_every_page_the_readme_links_exists() -> None:
    links = relative_links(README)
    docs = [link for link in links if link.startswith("docs/") and link.endswith(".md")]
    # The pages the README's old sections moved to.
    for moved in ("clients", "deploy", "index-and-eval", "export", "security", "configuration"):
        assert f"docs/{moved}.md" in docs, moved
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing


@pytest.mark.parametrize("name", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")))
def test_links_inside_the_docs_pages_exist(name: str) -> None:
    base = (ROOT / name).parent
    missing = [link for link in relative_links(name) if link and not (base / link).exists()]
    assert not missing, missing


def test_the_query_rule_is_in_bold_with_one_spelling_and_the_curl_follows_it() -> None:
    text = page(README)
    assert '**Queries get the query prompt, `"prompt_name": "query"`; documents get nothing' in text
    [embed] = [line for line in shell_lines(text, "curl") if "/v1/embeddings" in line]
    assert '"prompt_name": "query"' in embed


def test_the_dev_model_is_said_to_be_random_weights() -> None:
    assert "`MODEL=dev` is **random weights**" in page(README)


def dry_run_of_make_serve_dev(tmp_path: Path) -> str:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        [make, "--no-print-directory", "-n", "serve", "MODEL=dev", f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_readme_names_the_models_make_serve_dev_serves(tmp_path: Path) -> None:
    """The README's curls name `dev-embedding` and `dev-reranker`: the basenames of the checkpoints that
    `make serve MODEL=dev` builds (export/cli.py: DEV_MODEL_DIR; the Makefile: DEV_RERANKER_DIR) and exports into
    the dev repository."""
    commands = dry_run_of_make_serve_dev(tmp_path)
    [reranker_dir] = re.findall(r'dev-model --reranker --output "([^"]+)"', commands)
    assert re.search(r"qwen3-embed serve --model dev --model-repository \.cache/dev-repository ", commands), commands
    assert '--output ".cache/dev-repository" --name qwen3_reranker' in commands, commands
    models = {
        json_model
        for line in shell_lines(page(README), "curl")
        for json_model in re.findall(r'"model": "([^"]+)"', line)
    }
    assert models == {DEV_MODEL_DIR.name, Path(reranker_dir).name} == {"dev-embedding", "dev-reranker"}


def test_make_serve_installs_the_serve_and_export_extras_only(tmp_path: Path) -> None:
    commands = dry_run_of_make_serve_dev(tmp_path)
    installs = [line for line in commands.splitlines() if "pip install" in line and "-e " in line]
    assert installs and all('-e ".[serve,export]"' in line for line in installs), installs
