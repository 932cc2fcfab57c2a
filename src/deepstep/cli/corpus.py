"""``deepstep corpus index|search|fetch``: build a corpus' search index, query it, fetch the demo corpus."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from deepstep import json_text
from deepstep.cli.common import app, fail, load_settings, stderr, stdout, user_errors

# The index (bm25s, numpy) and the corpus reader (BeautifulSoup) are imported by the commands that use them.
if TYPE_CHECKING:
    from deepstep.bm25_index import BM25Index
    from deepstep.configuration import Settings
    from deepstep.records import Context

corpus_app = typer.Typer(no_args_is_help=True, help="Index and search a corpus folder; fetch the scikit-learn user guide or the R manuals.")
app.add_typer(corpus_app, name="corpus")

FETCHABLE = ("sklearn", "r-manuals")


def _index(corpus: Path, chunk_tokens: int | None = None, chunk_overlap: int | None = None) -> tuple[BM25Index, float]:
    from deepstep.bm25_index import BM25Index

    settings = load_settings(chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap)
    started = time.perf_counter()
    index = BM25Index.from_directory(corpus, cache_dir=settings.index_dir, chunk_tokens=settings.chunk_tokens, chunk_overlap=settings.chunk_overlap)
    return index, time.perf_counter() - started


def _describe(corpus: Path, index: BM25Index, seconds: float) -> str:
    from collections import Counter

    from deepstep.corpus import describe_skipped

    documents = len({p.ref_id for p in index.passages})
    how = "reused the cached index" if index.from_cache else "built the index"
    skipped = describe_skipped(Counter(index.skipped_reasons))
    return f"{corpus}: {len(index.passages)} passages from {documents} documents, {skipped}; {how} in {seconds:.2f} s"


@corpus_app.command("index")
def index(
    path: Annotated[Path, typer.Argument(help="Folder of Markdown, text, reStructuredText, HTML, PDF, DOCX, PPTX, XLSX or EPUB files.")],
    chunk_tokens: Annotated[int | None, typer.Option(help="Passage size in words (default: DEEPSTEP_CHUNK_TOKENS or 180).")] = None,
    chunk_overlap: Annotated[int | None, typer.Option(help="Words shared by consecutive passages (default 30).")] = None,
) -> None:
    """Split PATH into passages and build its BM25 index (reused until a file changes)."""
    from deepstep.corpus import corpus_root

    with user_errors():
        corpus_index, seconds = _index(corpus_root(path), chunk_tokens, chunk_overlap)
        stdout.print(_describe(path, corpus_index, seconds), highlight=False, soft_wrap=True)


def _hit_lines(rank: int, hit: Context) -> str:
    header = f"[bold]{rank}. {escape(hit['title'])}[/] ({escape(hit['source'])})  score {hit['score']:.3f}"
    ids = f"   ref_id {hit['ref_id']}  chunk_id {hit['chunk_id']}"
    text = "\n".join(f"   {escape(line)}" for line in hit["text"].splitlines())
    return f"{header}\n{ids}\n{text}\n"


def _matching_contexts(settings: Settings, query: str) -> list[Context]:
    """The corpus' ``settings.top_k`` best passages for ``query``, as the graph's retrieve node gets them.
    BM25 searches its cached index directly: LangChain's retriever machinery (it loads LangSmith)
    costs far more than the search itself, and this command should answer at once."""
    from deepstep.bm25_index import BM25Index, passage_context
    from deepstep.corpus_fetch import default_corpus_dir

    if settings.uses_postgres_retriever:
        from deepstep.retrieval import top_contexts

        return top_contexts(query, settings)
    corpus = settings.corpus or default_corpus_dir(settings.home)
    index = BM25Index.from_directory(
        corpus.resolve(), cache_dir=settings.index_dir.resolve(), chunk_tokens=settings.chunk_tokens, chunk_overlap=settings.chunk_overlap
    )
    return [passage_context(passage, score) for passage, score in index.search(query, settings.top_k)]


@corpus_app.command("search")
def search(
    query: Annotated[str, typer.Argument(help="What to look for (any language; Chinese works too).")],
    corpus: Annotated[Path | None, typer.Option(help="Corpus folder (default: the fetched scikit-learn user guide, else the demo corpus).")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Number of passages to show (1-50).")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print the hits as a JSON list.")] = False,
) -> None:
    """Print the passages that best match QUERY, best first."""
    from deepstep.corpus import demo_corpus_dir
    from deepstep.corpus_fetch import DEMO_CORPUS_NOTICE, default_corpus_dir

    with user_errors():
        if not 1 <= k <= 50:  # the top_k setting's range, reported under the option's own name
            fail(f"-k must be between 1 and 50, got {k}")
        settings = load_settings(corpus=corpus, top_k=k)
        if settings.corpus is None:
            settings = load_settings(corpus=default_corpus_dir(settings.home), top_k=k)
            if settings.corpus == demo_corpus_dir():
                stderr.print(DEMO_CORPUS_NOTICE, highlight=False, soft_wrap=True)
        hits = _matching_contexts(settings, query)
        if as_json:
            ranked = [{"rank": rank, **hit} for rank, hit in enumerate(hits, 1)]
            sys.stdout.write(json_text.dumps(ranked, ensure_ascii=False, indent=2) + "\n")
            return
        if not hits:
            stderr.print(f"no passage matches {query!r} in {settings.corpus}", highlight=False)
            return
        for rank, hit in enumerate(hits, 1):
            stdout.print(_hit_lines(rank, hit), highlight=False, soft_wrap=True)


@corpus_app.command("fetch")
def fetch(
    name: Annotated[
        str,
        typer.Argument(
            help="The corpus to fetch: sklearn (the scikit-learn user guide, BSD-3-Clause, the default corpus once fetched) or r-manuals "
            "(the R manuals as PDF, GPL-2, for `deepstep run --corpus DEEPSTEP_HOME/corpora/r-manuals`)."
        ),
    ],
    force: Annotated[bool, typer.Option("--force", help="Download again even when already fetched.")] = False,
    everything: Annotated[
        bool,
        typer.Option("--all", help="r-manuals: also the 2,415-page reference manual of the base packages (fullrefman.pdf; left out by default)."),
    ] = False,
) -> None:
    """Download a corpus from Debian's archive into DEEPSTEP_HOME/corpora/NAME (no root needed) and index it."""
    from deepstep.corpus_fetch import fetch_r_manuals, fetch_sklearn

    with user_errors():
        if name not in FETCHABLE:
            fail(f"unknown corpus {name!r}: the ones available are {' and '.join(FETCHABLE)}")
        if everything and name != "r-manuals":
            fail(f"--all applies to r-manuals only, not {name}")
        settings = load_settings()

        def on_status(message: str) -> None:
            stderr.print(message, highlight=False)

        if name == "sklearn":
            result = fetch_sklearn(settings.home, force=force, on_status=on_status)
            what = "scikit-learn user guide"
        else:
            result = fetch_r_manuals(settings.home, reference=everything, force=force, on_status=on_status)
            what = "R manuals"
        how = "already fetched" if result.reused else f"fetched in {result.seconds:.1f} s"
        stderr.print(f"{what} {result.version}: {result.pages} pages, {how}", highlight=False)
        corpus_index, seconds = _index(result.corpus_dir)
        stdout.print(_describe(result.corpus_dir, corpus_index, seconds), highlight=False, soft_wrap=True)
        if name == "sklearn":
            stderr.print("`deepstep run` now uses this corpus by default (pass --corpus DIR for another)", highlight=False)
        else:
            stderr.print(f"search these manuals with `deepstep run --corpus {result.corpus_dir} QUESTION`", highlight=False, soft_wrap=True)
