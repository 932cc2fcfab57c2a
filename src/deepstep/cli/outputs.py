"""``deepstep export``, ``import``, ``graph``, ``history`` and ``diff``: move threads in and out, draw the workflow, compare report versions."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from deepstep.atomic_files import atomic_path, write_text_atomically
from deepstep.cli.common import app, fail, finish_run, load_settings, progress_display, stderr, user_errors
from deepstep.errors import ConfigError

# The API, the store and the graph (LangGraph, pandas) are imported inside the commands that use them.
if TYPE_CHECKING:
    import pandas as pd
    from langchain_core.runnables.graph import Graph

GRAPH_FORMATS = ("mermaid", "ascii", "png")


def write_parquet(table: pd.DataFrame, path: Path) -> None:
    """Write the storyboard table as Parquet, atomically (needs pyarrow; contexts become a list of structs)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ConfigError("writing Parquet needs pyarrow: pip install pyarrow (or export with --csv FILE)") from None
    with atomic_path(path) as temp:
        table.to_parquet(temp, index=False, engine="pyarrow")


@contextmanager
def writable_path(path: Path) -> Iterator[None]:
    """An output that cannot be written becomes one line and exit code 2, not a traceback."""
    try:
        yield
    except OSError as error:
        fail(f"cannot write {error.filename or path}: {error.strerror or error}; pick a writable path")


@app.command("export")
def export(
    thread_id: Annotated[str, typer.Argument(help="The thread to export.")],
    dreamsboard: Annotated[Path | None, typer.Option("--dreamsboard", help="Directory for a dreamsboard task_step_store.json.")] = None,
    parquet: Annotated[Path | None, typer.Option("--parquet", help="Storyboard table as Parquet (needs pyarrow).")] = None,
    csv: Annotated[Path | None, typer.Option("--csv", help="Storyboard table as CSV.")] = None,
    markdown: Annotated[Path | None, typer.Option("--md", help="The Markdown report.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="The report as a standalone HTML page.")] = None,
    docx: Annotated[Path | None, typer.Option("--docx", help="The report as a Word document.")] = None,
    pdf: Annotated[Path | None, typer.Option("--pdf", help="The report as a PDF (needs WeasyPrint, in the pdf extra).")] = None,
) -> None:
    """Write a stored thread as a dreamsboard store, a Parquet or CSV table, or its report as Markdown, HTML, Word or PDF."""
    from deepstep import store
    from deepstep.threads import load

    with user_errors():
        if not any((dreamsboard, parquet, csv, markdown, html, docx, pdf)):
            fail("nothing to export: pass --dreamsboard DIR, --parquet FILE, --csv FILE, --md FILE, --html FILE, --docx FILE and/or --pdf FILE")
        result = load(thread_id, settings=load_settings())
        with writable_path(Path("the export")):
            if dreamsboard is not None:
                stderr.print(f"wrote {store.export_store(result.tree, dreamsboard)}", highlight=False)
            if parquet is not None:
                write_parquet(result.table(), parquet)
                stderr.print(f"wrote {parquet}", highlight=False)
            if csv is not None:
                from deepstep.render import storyboard_csv

                write_text_atomically(csv, storyboard_csv(result.tree))
                stderr.print(f"wrote {csv}", highlight=False)
            if markdown is not None:
                write_text_atomically(markdown, result.markdown)
                stderr.print(f"wrote {markdown}", highlight=False)
            for path, write in ((html, result.write_html), (docx, result.write_docx), (pdf, result.write_pdf)):
                if path is not None:
                    write(path)
                    stderr.print(f"wrote {path}", highlight=False)


@app.command("import")
def import_(
    directory: Annotated[Path, typer.Argument(help="Directory holding a dreamsboard task_step_store.json.")],
    thread_id: Annotated[str | None, typer.Option("--thread-id", help="Thread id (default: a new random id).")] = None,
    corpus: Annotated[Path | None, typer.Option(help="Folder of Markdown/text files for the steps still to answer.")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for report.md and table.csv (default: DEEPSTEP_HOME/runs/ID).")] = None,
) -> None:
    """Load a dreamsboard store into a new thread and answer only its unanswered steps."""
    import uuid

    from deepstep.api import import_store

    # Chosen here, not by the import: an interrupted import must name the thread to resume.
    thread_id = thread_id or uuid.uuid4().hex[:12]
    with user_errors(thread_id):
        settings = load_settings(corpus=corpus)
        stderr.print(f"thread {thread_id}")
        with progress_display() as on_progress:
            result = import_store(directory, thread_id, settings, on_progress=on_progress)
        finish_run(result, out, settings)


def _draw_png(drawable: Graph, path: Path) -> None:
    """The graph drawn offline with networkx and matplotlib (langchain's PNG drawing calls a web API)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("PNG needs matplotlib: pip install 'deepstep[notebooks]', or use --format mermaid and render it in any Mermaid viewer")
    import networkx as nx

    picture: nx.DiGraph[str] = nx.DiGraph()
    picture.add_nodes_from(drawable.nodes)
    picture.add_edges_from((edge.source, edge.target, {"conditional": edge.conditional}) for edge in drawable.edges)
    # Rows by distance from the start: works with the refine loop's cycles, unlike a topological order.
    start = next((n for n in picture if n == "__start__"), next(iter(picture)))
    distance = nx.single_source_shortest_path_length(picture, start)
    deepest = max(distance.values(), default=0)
    for name in picture:
        picture.nodes[name]["layer"] = distance.get(name, deepest + 1)
    positions = nx.multipartite_layout(picture, subset_key="layer", align="horizontal", scale=-1)
    figure, axes = plt.subplots(figsize=(7, max(4, 0.9 * len(picture))))
    solid = [(u, v) for u, v, d in picture.edges(data=True) if not d["conditional"]]
    dashed = [(u, v) for u, v, d in picture.edges(data=True) if d["conditional"]]
    nx.draw_networkx_nodes(picture, positions, ax=axes, node_color="#dde8f7", node_size=2600, edgecolors="#4a6fa5")
    nx.draw_networkx_labels(picture, positions, ax=axes, font_size=8)
    nx.draw_networkx_edges(picture, positions, edgelist=solid, ax=axes, arrows=True, node_size=2600)
    nx.draw_networkx_edges(picture, positions, edgelist=dashed, ax=axes, arrows=True, style="dashed", node_size=2600)
    axes.set_axis_off()
    try:
        with atomic_path(path) as temp:
            # format= because the temporary file's suffix is .tmp, not .png
            figure.savefig(temp, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)


@app.command("graph")
def graph_picture(
    format: Annotated[str, typer.Option("--format", "-f", help="mermaid, ascii or png.")] = "mermaid",  # noqa: A002
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write to this file (required for png).")] = None,
    xray: Annotated[bool, typer.Option("--xray", help="Show the per-step subgraph's nodes too.")] = False,
) -> None:
    """Draw the workflow graph."""
    with user_errors():
        if format not in GRAPH_FORMATS:
            fail(f"unknown format {format!r}: use mermaid, ascii or png")
        from deepstep.graph import graph

        drawable = graph.get_graph(xray=xray)
        if format == "png":
            if out is None:
                fail("--format png needs --out FILE.png")
            with writable_path(out):
                _draw_png(drawable, out)
            stderr.print(f"wrote {out}", highlight=False)
            return
        if format == "ascii":
            try:
                text = drawable.draw_ascii()
            except ImportError:
                fail("ascii drawing needs grandalf: pip install grandalf (it is in deepstep[notebooks]), or use --format mermaid")
        else:
            text = drawable.draw_mermaid()
        if out is None:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
        else:
            with writable_path(out):
                write_text_atomically(out, text)
            stderr.print(f"wrote {out}", highlight=False)


@app.command("history")
def history(thread_id: Annotated[str, typer.Argument(help="The thread.")]) -> None:
    """List a thread's report versions: time, action (run, resume, or the changes asked, e.g. rerun 0>1), steps changed, calls, cost."""
    from rich.table import Table

    from deepstep.cli.common import stdout
    from deepstep.history import versions

    with user_errors():
        found = versions(thread_id, settings=load_settings())
        table = Table("version", "time", "action", "steps changed", "calls", "cost")
        for version in found:
            cost = "" if version["cost"] is None else f"${version['cost']:.4f}"
            steps = "all" if version["number"] == 1 else ", ".join(version["steps"]) or "none"
            table.add_row(str(version["number"]), version["time"][:19].replace("T", " "), version["action"], steps, str(version["calls"]), cost)
        stdout.print(table)


@app.command("diff")
def diff(
    thread_id: Annotated[str, typer.Argument(help="The thread.")],
    from_version: Annotated[int | None, typer.Option("--from", help="The older version (default: the one before --to).")] = None,
    to_version: Annotated[int | None, typer.Option("--to", help="The newer version (default: the latest).")] = None,
) -> None:
    """Print a Markdown diff of two report versions of a thread (default: the last two)."""
    from deepstep import history

    with user_errors():
        text = history.diff(thread_id, from_version, to_version, settings=load_settings())
        sys.stdout.write(text or "the two versions' reports are the same\n")
