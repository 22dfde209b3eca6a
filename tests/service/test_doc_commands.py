"""The README's quick-start curls, and the HTTP commands of docs/clients.md and docs/deploy.md, run with the real
curl against the live test facade.

The README prints what each quick-start curl answers under `make serve MODEL=dev`. The session's dev models are
the ones `make serve MODEL=dev` builds (the same shape and seed), so the printed answer is checked key by key, and
its token counts and first number too; only the served names differ (the session's checkpoints sit in other
directories), so the README's names are swapped for the session's, as the ports are."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import httpx
import pytest

from tests.doc_pages import CLIENTS, README, code_blocks, page, section, shell_lines
from tests.helpers import Facade
from tests.reflection_client import json_paths

README_HTTP = "localhost:8080"
# The numbers a README example prints come from the dev models' weights; a different CPU may round the last digits.
PRINTED_TOLERANCE = 1e-4


def curl_binary() -> str:
    found = shutil.which("curl")
    if found is None:
        pytest.skip("curl is not installed")
    return found


@pytest.fixture(scope="module")
def served(facade: Facade) -> dict[str, str]:
    """The session facade's served name of each kind."""
    cards = httpx.get(f"{facade.base_url}/v1/models", timeout=30).json()["data"]
    return {card["kind"]: card["id"] for card in cards}


def aimed(line: str, facade: Facade, names: dict[str, str]) -> str:
    line = line.replace(README_HTTP, facade.base_url.removeprefix("http://"))
    for name, here in names.items():
        line = line.replace(f'"model": "{name}"', f'"model": "{here}"')
    return line


def run_shell(line: str) -> str:
    curl_binary()
    done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{line}: {done.stderr}"
    return done.stdout


def readme_examples() -> list[tuple[str, str]]:
    """Each quick-start curl of the README with the answer printed below it (the next plain code block, where
    `...` stands for numbers left out)."""
    text = page(README)
    pairs = []
    for match in re.finditer(r"```sh\n(curl .*?)```\s*```\n(.*?)```", text, flags=re.S):
        [line] = shell_lines(f"```sh\n{match.group(1)}```", "curl")
        pairs.append((line, match.group(2)))
    return pairs


def printed_json(printed: str) -> Any:
    return json.loads(printed.replace(",...", "").replace("\n", ""))


def test_the_readme_prints_an_answer_for_its_embedding_and_rerank_curls() -> None:
    paths = [re.search(r"localhost:8080(/\S+)", line).group(1) for line, _ in readme_examples()]  # type: ignore[union-attr]
    assert paths == ["/v1/embeddings", "/v1/rerank"]


@pytest.mark.parametrize(("line", "printed"), readme_examples(), ids=["embeddings", "rerank"])
def test_readme_curl_answers_as_printed(facade: Facade, served: dict[str, str], line: str, printed: str) -> None:
    names = {"dev-embedding": served["embedding"], "dev-reranker": served["reranker"]}
    got = json.loads(run_shell(aimed(line, facade, names)))
    want = printed_json(printed)
    assert json_paths(got) == json_paths(want)
    assert got["model"] == names[want["model"]]
    assert got["usage"] == want["usage"]
    if "data" in want:
        [item] = got["data"]
        assert len(item["embedding"]) == 64  # "64 floats (the dev model's size)"
        assert item["embedding"][0] == pytest.approx(want["data"][0]["embedding"][0], abs=PRINTED_TOLERANCE)
        assert sum(v * v for v in item["embedding"]) == pytest.approx(1.0, abs=1e-4)
    else:
        assert [r["index"] for r in got["results"]] == [r["index"] for r in want["results"]]
        assert got["results"][0]["document"] == want["results"][0]["document"]
        assert got["results"][0]["relevance_score"] == pytest.approx(
            want["results"][0]["relevance_score"], abs=PRINTED_TOLERANCE
        )
        assert got["meta"] == want["meta"]


# The docs pages name the real models; the session's dev models stand in for them.
REAL_NAMES = {"embedding": "Qwen3-Embedding-0.6B", "reranker": "Qwen3-Reranker-0.6B"}
PAGE_CURLS = [(name, line) for name in (CLIENTS, "docs/deploy.md") for line in shell_lines(page(name), "curl")]


def test_the_pages_have_their_curls() -> None:
    assert len([1 for name, _ in PAGE_CURLS if name == CLIENTS]) >= 4
    assert any("/metrics" in line for _, line in PAGE_CURLS)


@pytest.mark.parametrize(("name", "line"), PAGE_CURLS)
def test_docs_curl_commands_run(facade: Facade, served: dict[str, str], name: str, line: str) -> None:
    names = {REAL_NAMES[kind]: here for kind, here in served.items()}
    output = run_shell(aimed(line, facade, names))
    if "|" in line:  # a filtered /metrics scrape: the named series are there
        assert re.search(r"^qwen3_embed_requests_total\{", output, flags=re.M), output
        return
    answer = json.loads(output)
    assert "error" not in answer, answer
    if "/v1/embeddings" in line:
        body = json.loads(re.search(r"-d '(.*)'", line).group(1))  # type: ignore[union-attr]
        assert len(answer["data"][0]["embedding"]) == body.get("dimensions", 64)


def test_the_openai_client_block_runs(
    facade: Facade, served: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    [code] = code_blocks(section(CLIENTS, "## OpenAI client"), "python")
    for text, here in [
        ("http://localhost:8080/v1", f"{facade.base_url}/v1"),
        ("Qwen3-Embedding-0.6B", served["embedding"]),
        ("dimensions=256", "dimensions=32"),  # the dev model has 64 dimensions
    ]:
        assert text in code
        code = code.replace(text, here)
    exec(compile(code, f"{CLIENTS} (OpenAI client)", "exec"), {})
    size, tokens = capsys.readouterr().out.split()
    assert size == "64" and int(tokens) > 0
