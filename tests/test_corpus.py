"""Corpus ingestion (HTML extraction, file kinds, edge files), the `deepstep corpus` commands and the sklearn fetch."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

import deepstep
from deepstep import corpus_fetch, step_tree
from deepstep.cli import app
from deepstep.configuration import Settings
from deepstep.corpus import UNIT, demo_corpus_dir, html_to_text, load_passages, read_document, ref_id_for
from deepstep.corpus_fetch import default_corpus_dir, r_manual_file, user_guide_page
from deepstep.errors import CorpusError

runner = CliRunner()
TEST_CORPUS = Path(__file__).parent / "data" / "corpus"

SPHINX_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>1.1. Linear Models &mdash; scikit-learn 1.2.1 documentation</title>
<script>var tracking = "SCRIPT-NOISE";</script><style>.x { color: red } /* STYLE-NOISE */</style></head>
<body>
<nav id="navbar"><a href="index.html">Home NAV-NOISE</a><a href="install.html">Install</a></nav>
<div id="sk-sidebar-wrapper"><div class="sk-sidebar-toc-wrapper"><ul><li><a href="#">SIDEBAR-NOISE</a></li></ul></div></div>
<div role="main" class="body">
  <section id="linear-models">
  <h1><span class="section-number">1.1. </span>Linear Models<a class="headerlink" href="#linear-models">¶</a></h1>
  <p>The following are a set of methods intended for regression in which
  the target value is expected to be a <em>linear combination</em> of the features.</p>
  <section><h2>Ordinary Least Squares<a class="headerlink" href="#ols">¶</a></h2>
  <p>LinearRegression fits a linear model.</p>
  <div class="highlight"><pre><span>&gt;&gt;&gt; </span>reg = LinearRegression()
<span>&gt;&gt;&gt; </span>reg.fit(X,   y)</pre></div>
  <ul><li><p>first item</p></li><li>second item</li></ul>
  <table><tr><th>name</th><th>meaning</th></tr><tr><td><p>alpha</p></td><td>regularization strength</td></tr></table>
  <aside class="topic"><p>Examples: Linear Regression Example</p></aside>
  <aside class="sidebar"><p>ASIDE-NOISE</p></aside>
  </section></section>
</div>
<footer class="sk-content-footer">&copy; 2007 - 2022, FOOTER-NOISE</footer>
<div role="search"><form><input value="SEARCH-NOISE"></form></div>
</body></html>
"""


def words(text: str) -> list[str]:
    return UNIT.findall(text)


# --- HTML extraction ---


def test_html_keeps_the_content_and_drops_navigation_and_boilerplate():
    text, title = html_to_text(SPHINX_PAGE)
    assert title == "Linear Models"
    for noise in ("SCRIPT-NOISE", "STYLE-NOISE", "NAV-NOISE", "SIDEBAR-NOISE", "FOOTER-NOISE", "SEARCH-NOISE", "ASIDE-NOISE", "¶", "1.1."):
        assert noise not in text
    assert text.startswith("# Linear Models\n\nThe following are a set of methods intended for regression in which the target value")
    assert "\n\n## Ordinary Least Squares\n\n" in text
    assert ">>> reg = LinearRegression()\n>>> reg.fit(X,   y)" in text  # preformatted text verbatim
    assert "- first item\n- second item" in text
    assert "name | meaning |\nalpha | regularization strength |" in text
    assert "Examples: Linear Regression Example" in text  # Sphinx topics are content


def test_html_without_a_main_element_uses_the_body_and_the_page_title():
    text, title = html_to_text("<html><head><title>Plain page</title></head><body><header>HEADER</header><p>Body text.</p></body></html>")
    assert (text, title) == ("Body text.", "Plain page")


def test_redirect_stub_has_no_text():
    page = '<html><head><meta http-equiv="refresh" content="0; url=other.html"></head><body><p>Moved to other.</p></body></html>'
    assert html_to_text(page)[0] == ""


# --- files of every kind, and the ones skipped ---


@pytest.fixture
def mixed_corpus(tmp_path) -> Path:
    root = tmp_path / "mixed"
    (root / "guide").mkdir(parents=True)
    (root / "guide" / "linear.html").write_text(SPHINX_PAGE, encoding="utf-8")
    (root / "notes.md").write_text("Intro line\n\n# Markdown Title\n\nSome markdown prose.", encoding="utf-8")
    (root / "manual.rst").write_text("Ridge Notes\n===========\n\nRidge shrinks coefficients.", encoding="utf-8")
    (root / "plain.txt").write_text("Just some text without a heading.", encoding="utf-8")
    latin1_page = '<html><head><meta charset="iso-8859-1"></head><body><h1>Caf\xe9</h1><p>Cr\xe8me br\xfbl\xe9e recipe.</p></body></html>'
    (root / "latin1.html").write_bytes(latin1_page.encode("latin-1"))
    # Skipped: empty, whitespace only, binary, undecodable, HTML with nothing but navigation, a redirect stub.
    (root / "empty.md").write_bytes(b"")
    (root / "blank.txt").write_text(" \n\t\n", encoding="utf-8")
    (root / "binary.html").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    (root / "latin1.txt").write_bytes("na\xefve caf\xe9".encode("latin-1"))
    (root / "nav-only.htm").write_text("<html><body><nav><a href='a.html'>A</a></nav><footer>(c)</footer></body></html>", encoding="utf-8")
    redirect = '<html><head><meta http-equiv="Refresh" content="0; url=x.html"></head><body>moved</body></html>'
    (root / "moved.html").write_text(redirect, encoding="utf-8")
    # Ignored entirely: other suffixes and hidden files.
    (root / "image.png").write_bytes(b"\x89PNG")
    (root / ".fetched.json").write_text("{}", encoding="utf-8")
    return root


def test_every_file_kind_is_read_and_bad_files_are_counted(mixed_corpus):
    passages, skipped = load_passages(mixed_corpus)
    assert skipped == 6
    titles = {p.source: p.title for p in passages}
    assert titles == {
        "guide/linear.html": "Linear Models",
        "latin1.html": "Café",
        "manual.rst": "Ridge Notes",
        "notes.md": "Markdown Title",
        "plain.txt": "plain",
    }
    html = next(p for p in passages if p.source == "guide/linear.html")
    assert "NAV-NOISE" not in html.text and "linear combination" in html.text
    assert "Crème brûlée" in next(p.text for p in passages if p.source == "latin1.html")


def test_read_document_returns_none_for_undecodable_text(mixed_corpus):
    assert read_document(mixed_corpus / "latin1.txt") is None
    assert read_document(mixed_corpus / "binary.html") is None
    assert read_document(mixed_corpus / "manual.rst") == ("Ridge Notes", "Ridge Notes\n===========\n\nRidge shrinks coefficients.")


def test_ids_are_stable_across_runs_and_folders(mixed_corpus, tmp_path):
    first, _ = load_passages(mixed_corpus)
    again, _ = load_passages(mixed_corpus)
    moved, _ = load_passages(shutil.copytree(mixed_corpus, tmp_path / "moved"))
    assert first == again == moved
    assert {p.ref_id for p in first if p.source == "guide/linear.html"} == {ref_id_for("guide/linear.html")}
    assert len({p.chunk_id for p in first}) == len(first)


def test_chunk_size_and_overlap_are_configurable(tmp_path):
    (tmp_path / "long.md").write_text(" ".join(f"w{i}" for i in range(1000)), encoding="utf-8")
    for size, overlap in [(50, 0), (120, 40)]:
        chunks = [words(p.text) for p in load_passages(tmp_path, chunk_tokens=size, chunk_overlap=overlap)[0]]
        assert max(len(c) for c in chunks) == size
        assert all(current[:overlap] == previous[size - overlap :] for previous, current in zip(chunks, chunks[1:], strict=False))
        assert chunks[-1][-1] == "w999"
    with pytest.raises(CorpusError):
        load_passages(tmp_path, chunk_tokens=20, chunk_overlap=25)


def test_chunks_after_the_first_open_at_a_line_start_when_the_overlap_allows(tmp_path):
    lines = [" ".join(f"l{i}w{j}" for j in range(12)) for i in range(40)]
    (tmp_path / "lines.md").write_text("\n".join(lines), encoding="utf-8")
    chunks = [words(p.text) for p in load_passages(tmp_path, chunk_tokens=100, chunk_overlap=20)[0]]
    assert len(chunks) > 3
    assert all(chunk[0].endswith("w0") and chunk[-1].endswith("w11") for chunk in chunks)
    # The overlap grows by less than half of chunk_overlap to reach the line start; the last chunk gives
    # its overlap up to end with the text (its start is still a line start).
    shared = [len(set(previous) & set(current)) for previous, current in zip(chunks, chunks[1:], strict=False)]
    assert all(20 <= n <= 30 for n in shared[:-1]) and shared[-1] <= 30


# --- which corpus a run uses ---


def fake_fetched_corpus(home: Path) -> Path:
    """The layout `corpus fetch sklearn` leaves behind (a converted page plus the fetch record)."""
    folder = home / "corpora" / "sklearn"
    (folder / "modules").mkdir(parents=True)
    (folder / "modules" / "linear_model.md").write_text("# Linear Models\n\nRidgeCV chooses alpha by cross-validation.", encoding="utf-8")
    sgd = "# Stochastic Gradient Descent\n\nL is a loss function that measures model (mis)fit."
    (folder / "modules" / "sgd.md").write_text(sgd, encoding="utf-8")
    (folder / ".fetched.json").write_text(json.dumps({"version": "test", "pages": 2}), encoding="utf-8")
    return folder


def test_a_thread_keeps_the_default_corpus_it_started_with(fake_llm, tmp_path):
    home = tmp_path / "home"
    fetched = fake_fetched_corpus(home)
    settings = Settings.build(base_url=fake_llm.base_url, home=home, rollouts=0, max_retries=0)
    paused = deepstep.run("What is a loss function?", thread_id="pinned", settings=settings.model_copy(update={"review": True}))
    assert paused.status == "awaiting_review"
    (fetched / ".fetched.json").unlink()  # the default is now the demo corpus; the thread must not switch
    assert default_corpus_dir(home) == demo_corpus_dir()
    result = deepstep.resume("pinned", settings=settings)
    contexts = [c for step in step_tree.steps(result.tree) for c in step["contexts"]]
    assert contexts and {c["source"] for c in contexts} <= {"modules/sgd.md", "modules/linear_model.md"}


def test_default_corpus_is_the_fetched_guide_else_the_demo_corpus(tmp_path, caplog):
    home = tmp_path / "home"
    assert default_corpus_dir(home) == demo_corpus_dir()
    fetched = fake_fetched_corpus(home)
    assert default_corpus_dir(home) == fetched


def test_user_guide_pages_are_selected_from_the_package():
    root = "./usr/share/doc/python-sklearn-doc/html/"
    assert user_guide_page(root + "modules/linear_model.html") == "modules/linear_model.html"
    assert user_guide_page(root + "datasets/toy_dataset.html") == "datasets/toy_dataset.html"
    assert user_guide_page(root + "glossary.html") == "glossary.html"
    for other in (
        "modules/classes.html",
        "modules/generated/sklearn.linear_model.Ridge.html",
        "auto_examples/plot_ols.html",
        "_downloads/x/plot.html",
        "index.html",
        "search.html",
        "modules/linear_model.rst.txt",
        "whats_new.html",
    ):
        assert user_guide_page(root + other) is None, other
    assert user_guide_page("usr/share/doc/other/html/modules/linear_model.html") is None


def test_r_manuals_are_selected_from_the_package_and_the_reference_manual_only_when_asked():
    root = "./usr/share/R/doc/manual/"
    for manual in ("R-intro.pdf", "R-lang.pdf", "R-data.pdf", "R-admin.pdf", "R-FAQ.pdf", "R-ints.pdf", "R-exts.pdf"):
        assert r_manual_file(root + manual) == manual
    assert r_manual_file(root + "fullrefman.pdf") is None
    assert r_manual_file(root + "fullrefman.pdf", reference=True) == "fullrefman.pdf"
    assert r_manual_file(root + "refman.pdf", reference=True) is None  # the same file as fullrefman.pdf
    # The package's links to the manuals, and other folders.
    assert r_manual_file("./usr/share/doc/r-doc-pdf/manual/R-intro.pdf") is None
    assert r_manual_file("./usr/share/R/doc/R-intro.pdf") is None
    assert r_manual_file(root + "R-intro.html") is None


# --- the commands ---


def test_index_command_builds_once_then_reuses_until_a_file_changes(tmp_path):
    corpus = Path(shutil.copytree(TEST_CORPUS, tmp_path / "corpus"))
    first = runner.invoke(app, ["corpus", "index", str(corpus)])
    assert first.exit_code == 0, first.output
    assert "built the index" in first.stdout and "3 files skipped" in first.stdout
    second = runner.invoke(app, ["corpus", "index", str(corpus)])
    assert "reused the cached index" in second.stdout
    (corpus / "volcanoes.rst").write_text("Volcanoes\n=========\n\nMagma rises.", encoding="utf-8")
    third = runner.invoke(app, ["corpus", "index", str(corpus)])
    assert "built the index" in third.stdout
    other_chunking = runner.invoke(app, ["corpus", "index", str(corpus), "--chunk-tokens", "40", "--chunk-overlap", "5"])
    assert "built the index" in other_chunking.stdout


def test_search_json_is_parseable_with_relative_sources():
    result = runner.invoke(app, ["corpus", "search", "lava eruptions", "--corpus", str(TEST_CORPUS), "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert 1 <= len(hits) <= 2
    assert set(hits[0]) == {"rank", "ref_id", "chunk_id", "title", "source", "score", "text"}
    assert hits[0]["source"] == "volcanoes.rst" and hits[0]["title"] == "Volcanoes" and hits[0]["rank"] == 1
    assert hits[0]["score"] > 0 and "lava" in hits[0]["text"].lower()


def test_search_in_chinese_and_as_text():
    result = runner.invoke(app, ["corpus", "search", "什么是损失函数", "--corpus", str(TEST_CORPUS), "-k", "1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("1. 损失函数 (损失函数.md)  score ")
    assert "chunk_id" in result.stdout


def test_search_k_limits_the_hits():
    result = runner.invoke(app, ["corpus", "search", "loss", "--corpus", str(demo_corpus_dir()), "-k", "3", "--json"])
    assert len(json.loads(result.stdout)) == 3


def test_search_uses_the_fetched_corpus_by_default(tmp_path):
    json_hits = runner.invoke(app, ["corpus", "search", "loss function", "--json"])
    assert json_hits.exit_code == 0, json_hits.output
    assert "demo corpus" in json_hits.stderr  # the one-line notice
    assert json.loads(json_hits.stdout)[0]["source"].endswith(".md")
    fake_fetched_corpus(tmp_path / "home")  # DEEPSTEP_HOME (conftest)
    hits = json.loads(runner.invoke(app, ["corpus", "search", "RidgeCV alpha", "--json"]).stdout)
    assert [hit["source"] for hit in hits] == ["modules/linear_model.md"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["corpus", "search", "q", "--corpus", "/no/such/folder"], "does not exist"),
        (["corpus", "search", "q", "--corpus", str(TEST_CORPUS), "-k", "0"], "-k must be between 1 and 50"),
        (["corpus", "index", "/no/such/folder"], "does not exist"),
        (["corpus", "index", str(TEST_CORPUS), "--chunk-tokens", "20", "--chunk-overlap", "30"], "chunk_overlap < chunk_tokens"),
        (["corpus", "fetch", "wikipedia"], "unknown corpus 'wikipedia': the ones available are sklearn and r-manuals"),
        (["corpus", "fetch", "sklearn", "--all"], "--all applies to r-manuals only"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "must_name"),
    [
        (["corpus", "index", "/no/such/folder"], set()),
        (["corpus", "index", "EMPTY"], set()),
        (["corpus", "index", str(TEST_CORPUS), "--chunk-tokens", "5"], set()),
        (["corpus", "search", "q", "--corpus", "/no/such/folder"], set()),
        (["corpus", "search", "q", "--corpus", "EMPTY"], set()),
        (["corpus", "search", "q", "--corpus", str(TEST_CORPUS), "-k", "0"], {"-k"}),
        (["corpus", "search", "q", "--corpus", str(TEST_CORPUS), "-k", "51"], {"-k"}),
    ],
)
def test_error_hints_name_only_options_the_command_has(args, must_name, tmp_path):
    """A hint names options of the command that failed, or quotes another command with its real options."""
    from test_readme import check_command_lines, command_and_options, named_options

    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if arg == "EMPTY" else arg for arg in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    message = result.stderr
    quoted = re.findall(r"`(deepstep [^`]*)`", message)
    check_command_lines([shlex.split(command)[1:] for command in quoted])
    _, options, _ = command_and_options(args)
    named = named_options(re.sub(r"`[^`]*`", "", message))
    assert named <= options, f"{' '.join(args[:2])} has no option {sorted(named - options)}: {message}"
    assert must_name <= named, f"the hint should name {sorted(must_name)}: {message}"


def test_no_match_is_not_an_error():
    result = runner.invoke(app, ["corpus", "search", "xyzzy", "--corpus", str(TEST_CORPUS), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == []


# --- the real scikit-learn fetch (network: Debian's archive) ---


def _debian_unreachable() -> str | None:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return "apt-get/dpkg-deb not installed: not a Debian-based system"
    try:
        socket.create_connection(("deb.debian.org", 80), timeout=10).close()
    except OSError as error:
        return f"Debian's archive deb.debian.org is unreachable: {error}"
    return None


@pytest.mark.slow
def test_fetch_sklearn_for_real(tmp_path):
    if reason := _debian_unreachable():
        pytest.skip(reason)
    result = runner.invoke(app, ["corpus", "fetch", "sklearn"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "home" / "corpora" / "sklearn"
    record = json.loads((folder / ".fetched.json").read_text(encoding="utf-8"))
    assert record["package"] == "python-sklearn-doc" and record["pages"] >= 40
    assert "BSD" in (folder / ".copyright").read_text(encoding="utf-8") or "bsd" in (folder / ".copyright").read_text(encoding="utf-8").lower()
    pages = {p.relative_to(folder).as_posix() for p in folder.rglob("*.md")}
    assert {"modules/linear_model.md", "modules/model_evaluation.md", "modules/cross_validation.md"} <= pages
    assert not any(name.startswith(("auto_examples", "_", "modules/generated")) or name == "modules/classes.md" for name in pages)
    linear = (folder / "modules" / "linear_model.md").read_text(encoding="utf-8")
    assert linear.startswith("# Linear Models") and "RidgeCV" in linear and "<div" not in linear and "¶" not in linear
    assert "built the index" in result.stdout

    again = runner.invoke(app, ["corpus", "fetch", "sklearn"])
    assert "already fetched" in again.stderr and "reused the cached index" in again.stdout
    hits = json.loads(runner.invoke(app, ["corpus", "search", "How does RidgeCV choose alpha?", "--json"]).stdout)
    assert hits[0]["source"] == "modules/linear_model.md"
    assert default_corpus_dir(tmp_path / "home") == folder


def test_fetch_failure_is_a_clear_error(tmp_path, monkeypatch):
    # An empty PATH: apt-get cannot be found, as on a system without apt.
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CorpusError, match="(apt-get|dpkg-deb) not found.*`deepstep run --corpus DIR`"):
        corpus_fetch.fetch_sklearn(tmp_path / "home")
    result = runner.invoke(app, ["corpus", "fetch", "sklearn"])
    assert result.exit_code == 2 and "not found: `deepstep corpus fetch sklearn` needs a Debian" in result.stderr
    result = runner.invoke(app, ["corpus", "fetch", "r-manuals"])
    assert result.exit_code == 2 and "not found: `deepstep corpus fetch r-manuals` needs a Debian" in result.stderr


@pytest.mark.slow
def test_fetch_falls_back_to_private_package_lists(tmp_path, monkeypatch):
    """Without usable system package lists (a non-root user cannot refresh them), apt-get runs on its own lists."""
    if reason := _debian_unreachable():
        pytest.skip(reason)
    real_apt_get = shutil.which("apt-get")
    shim = tmp_path / "bin" / "apt-get"
    shim.parent.mkdir()
    # Only the first, plain `apt-get download PKG` fails, as it does when the system lists lack the package.
    shim.write_text(
        f'#!/bin/sh\nif [ "$1" = "download" ]; then echo "E: Unable to locate package $2" >&2; exit 100; fi\nexec {real_apt_get} "$@"\n',
        encoding="utf-8",
    )
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim.parent}:{Path(real_apt_get).parent}:/usr/bin:/bin")
    result = corpus_fetch.fetch_sklearn(tmp_path / "home")
    assert result.pages >= 40 and not result.reused
    assert any((tmp_path / "home" / "apt" / "lists").glob("*_Packages*"))
