"""Special tokens in user text never become ids outside the model's embedding table."""

from __future__ import annotations

from pathlib import Path

from service.pipeline.tokenization import TextTokenizer, load_tokenizer


def test_out_of_table_added_tokens_become_text(dev_model_dir: Path) -> None:
    rows_4b = 151665  # the 4B/8B tables: <think> (151667) etc. are past the end
    tok = TextTokenizer(load_tokenizer(dev_model_dir, rows_4b))
    text = "a <think>b</think> <|endoftext|> <|im_start|> <|file_sep|>"
    ids = tok.content_ids([text])[0]
    assert max(ids) < rows_4b
    assert 151643 in ids and 151644 in ids  # in-table special tokens keep their ids, as the reference does
    full = TextTokenizer(load_tokenizer(dev_model_dir, 151669))
    assert 151667 in full.content_ids([text])[0]  # the 0.6B table has <think>


def test_no_eos_added_by_tokenizer(dev_model_dir: Path) -> None:
    tok = TextTokenizer(load_tokenizer(dev_model_dir, 151669))
    assert tok.content_ids(["hello"])[0][-1] != 151643
    assert tok.prefix_length("Instruct: x\nQuery:") >= 1


def test_truncate_start_benchmark_runs_and_agrees() -> None:
    """benchmarks/truncate_start.py (its figures are in docs/reliability.md), on a small text: the tail
    window and the whole-text tokenization give the same ids."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "benchmarks.truncate_start", "--megabytes", "0.5", "--cap", "512"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("same ids")
    assert '"mode": "window"' in done.stdout and '"mode": "whole"' in done.stdout
