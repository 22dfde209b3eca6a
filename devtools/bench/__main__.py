"""`python -m devtools.bench ...`: the load generator without an installed `qwen3-embed`."""

import typer

from devtools.bench.cli import bench

app = typer.Typer(add_completion=False)
app.command()(bench)  # one command: typer runs it without a subcommand name

if __name__ == "__main__":
    app()
