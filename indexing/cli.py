"""`qwen3-embed index` and `qwen3-embed eval`, added through the `qwen3_embed.cli` entry point (`register`).
Heavy imports (pyarrow, ir-measures, matplotlib) stay inside the commands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from service.cli import Extensions


def index(
    input: Annotated[Path, typer.Argument(help="Corpus: .jsonl, .csv, .tsv or .parquet", exists=True, dir_okay=False)],
    output: Annotated[Path, typer.Argument(help="Parquet file to write (id, vector)")],
    id_field: Annotated[str, typer.Option(help="Field holding the row id")] = "id",
    text_field: Annotated[str, typer.Option(help="Field holding the text")] = "text",
    target: Annotated[str, typer.Option(help="host:port (gRPC) or the base URL, .../v1 (--api http)")] = (
        "localhost:50051"
    ),
    api: Annotated[str, typer.Option(help="grpc (this service) or http (any OpenAI-compatible API)")] = "grpc",
    api_key: Annotated[str | None, typer.Option(envvar="QWEN3_EMBED_API_KEY")] = None,
    model: Annotated[str | None, typer.Option(help="OpenAI `model` (default: the server's)")] = None,
    prompt_name: Annotated[str, typer.Option(help="Prompt for every text ('' for none)")] = "document",
    instruction: Annotated[str, typer.Option(help="A custom instruction instead of the prompt")] = "",
    dimensions: Annotated[int, typer.Option(help="Matryoshka size (0 = full)")] = 0,
    normalize: Annotated[bool, typer.Option(help="L2-normalise the vectors")] = True,
    truncate: Annotated[str, typer.Option(help="none (too long = rejected), end or start")] = "none",
    encoding: Annotated[str, typer.Option(help="float, float16, binary, ubinary, int8 or uint8")] = "float",
    concurrency: Annotated[int, typer.Option(help="Requests in flight")] = 4,
    batch_size: Annotated[int, typer.Option(help="Texts per request (capped at the server's limit)")] = 128,
    chunk_rows: Annotated[int, typer.Option(help="Rows per committed row group (the resume unit)")] = 2048,
    timeout: Annotated[float, typer.Option(help="Deadline per request, seconds")] = 60.0,
    retries: Annotated[int, typer.Option(help="Attempts per request on overload / unavailability")] = 8,
    rejects: Annotated[Path | None, typer.Option(help="Rejects file (default <output stem>.rejects.jsonl)")] = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar")] = True,
    priority: Annotated[
        str, typer.Option(help="Priority class of the requests: bulk (search traffic goes first) or interactive")
    ] = "bulk",
) -> None:
    """Embeds a corpus into Parquet (id, vector); rerun the same command to resume after an interruption."""
    from indexing.index import IndexConfig, run_with_progress
    from service.client import EmbedError, EmbedOptions

    try:
        options = EmbedOptions(prompt_name, instruction, dimensions, normalize, truncate.lower(), encoding.lower())
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if api not in ("grpc", "http"):
        raise typer.BadParameter("grpc or http", param_hint="--api")
    if priority not in ("bulk", "interactive"):
        raise typer.BadParameter("bulk or interactive", param_hint="--priority")
    cfg = IndexConfig(
        input=input,
        output=output,
        id_field=id_field,
        text_field=text_field,
        target=target,
        api=api,
        api_key=api_key,
        model=model,
        options=options,
        concurrency=max(1, concurrency),
        batch_size=max(1, batch_size),
        chunk_rows=max(1, chunk_rows),
        timeout_s=timeout,
        retry_attempts=max(1, retries),
        rejects=rejects,
        progress=progress,
        priority=priority,
    )
    try:
        summary = run_with_progress(cfg)
    except EmbedError as exc:
        typer.echo(f"index failed: {exc} (rerun the same command to resume)", err=True)
        raise typer.Exit(code=1) from exc
    except (ValueError, OSError) as exc:  # the input or the options: rerunning as is cannot help
        typer.echo(f"index failed: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(summary.line())
    typer.echo(f"wrote {output}; rejects in {cfg.rejects_path}")


def eval_command(
    data: Annotated[Path, typer.Argument(help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")],
    system: Annotated[
        list[str],
        typer.Option(
            help="NAME=grpc://host:port?dims=64,256,0&precisions=float32,binary or NAME=http://host/v1?model=M"
            "&api_key_env=VAR (repeat for each system)"
        ),
    ],
    output_dir: Annotated[Path, typer.Option(help="Where results.csv, results.md and matryoshka.png go")] = Path(
        "eval-results"
    ),
    split: str = "test",
    k: Annotated[str, typer.Option(help="Recall cut-offs, comma-separated")] = "10,100",
    priority: Annotated[
        str, typer.Option(help="Priority class of the requests: bulk (search traffic goes first) or interactive")
    ] = "bulk",
) -> None:
    """Retrieval metrics (nDCG@10, Recall@k, MRR via ir-measures) for one or more endpoints: one table and a
    Matryoshka plot."""
    from rich.console import Console
    from rich.table import Table

    from indexing.corpus import BeirError, read_beir
    from indexing.evaluate import evaluate, parse_system, write_outputs
    from service.client import EmbedError

    try:
        systems = [parse_system(s) for s in system]
        ks = [int(x) for x in k.split(",") if x]
        if not ks or min(ks) < 1:
            raise BeirError(f"--k {k!r}: give positive cut-offs, e.g. 10,100")
        if priority not in ("bulk", "interactive"):
            raise BeirError(f"--priority {priority!r}: bulk or interactive")
        beir = read_beir(data, split)  # validated whole before any system is called
    except (BeirError, ValueError, OSError) as exc:  # the folder or the options: one message, exit 2
        typer.echo(f"eval: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    try:
        rows = evaluate(systems, beir, ks, priority)
    except (EmbedError, ValueError, OSError) as exc:
        typer.echo(f"eval failed: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    table = Table(title=f"{data.name} ({split})")
    for column in rows[0]:
        table.add_column(column, justify="left" if column in ("system", "precision") else "right")
    for row in rows:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    Console().print(table)
    for path in write_outputs(rows, output_dir):
        typer.echo(f"wrote {path}")


def register(ext: Extensions) -> None:
    """The `qwen3_embed.cli` entry point."""
    ext.app.command("index")(index)
    ext.app.command("eval")(eval_command)
