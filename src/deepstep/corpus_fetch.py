"""Corpora fetched from Debian's archive without root privileges, each under ``HOME/corpora/NAME`` with a
``.fetched.json`` record and the package's copyright file: the scikit-learn user guide (``python-sklearn-doc``,
BSD-3-Clause) converted to Markdown-like text, the default corpus once fetched (else the bundled demo
corpus); and the R manuals as the PDFs they are (``r-doc-pdf``, GPL-2), real paged documents no one here wrote.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from deepstep.atomic_files import staging_folder
from deepstep.corpus import demo_corpus_dir, html_to_text
from deepstep.errors import CorpusError

logger = logging.getLogger(__name__)


def sklearn_corpus_dir(home: Path) -> Path:
    return home / "corpora" / "sklearn"


_FETCH_RECORD = ".fetched.json"


def is_fetched(corpus_dir: Path) -> bool:
    return (corpus_dir / _FETCH_RECORD).is_file()


def _fetch_record(corpus_dir: Path) -> dict | None:
    """The record a finished fetch wrote, or ``None`` when there is none or it is damaged (fetch again)."""
    if not is_fetched(corpus_dir):
        return None
    try:
        record = json.loads((corpus_dir / _FETCH_RECORD).read_bytes())
        if isinstance(record, dict) and isinstance(record.get("pages", 0), int):
            return record
    except (OSError, ValueError, RecursionError):
        pass
    logger.warning("%s is damaged: fetching the corpus again", corpus_dir / _FETCH_RECORD)
    return None


DEMO_CORPUS_NOTICE = "corpus: the bundled demo corpus (run `deepstep corpus fetch sklearn` for the scikit-learn user guide)"


def default_corpus_dir(home: Path) -> Path:
    """The scikit-learn user guide when it has been fetched into ``home``, else the bundled demo corpus
    (see ``DEMO_CORPUS_NOTICE``)."""
    sklearn = sklearn_corpus_dir(home)
    return sklearn if is_fetched(sklearn) else demo_corpus_dir()


def announce_demo_corpus() -> None:
    """Log the demo corpus notice; said where a run pins its default corpus, once per run."""
    logger.warning(DEMO_CORPUS_NOTICE)


# --- fetching it from Debian ---

SKLEARN_PACKAGE = "python-sklearn-doc"
_DOC_ROOT = PurePosixPath("usr/share/doc/python-sklearn-doc")
_HTML_ROOT = _DOC_ROOT / "html"
# The user guide's chapters; the rest of the site is API reference, examples, navigation and project pages.
_USER_GUIDE_FOLDERS = ("modules", "datasets", "computing")
_USER_GUIDE_PAGES = frozenset({"common_pitfalls.html", "model_persistence.html", "visualizations.html", "dispatching.html", "glossary.html"})
_NOT_USER_GUIDE = frozenset({"modules/classes.html"})  # the API reference index


@dataclass(frozen=True)
class FetchResult:
    corpus_dir: Path
    version: str
    pages: int
    seconds: float
    reused: bool


def user_guide_page(member: str) -> str | None:
    """The page's path relative to the HTML root when ``member`` (a path in the package) is a user guide page."""
    path = PurePosixPath(member.removeprefix("./"))
    if path.suffix != ".html" or not path.is_relative_to(_HTML_ROOT):
        return None
    relative = path.relative_to(_HTML_ROOT)
    name = relative.as_posix()
    in_folder = len(relative.parts) == 2 and relative.parts[0] in _USER_GUIDE_FOLDERS
    if (in_folder or (len(relative.parts) == 1 and name in _USER_GUIDE_PAGES)) and name not in _NOT_USER_GUIDE:
        return name
    return None


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    except FileNotFoundError:
        raise CorpusError(
            f"{command[0]} not found: `deepstep corpus fetch` needs a Debian or Ubuntu system; runs use the bundled "
            "demo corpus, or your own folder with `deepstep run --corpus DIR`"
        ) from None
    except subprocess.TimeoutExpired:
        raise CorpusError(f"`{' '.join(command)}` timed out: check the network, or run on your own folder with `deepstep run --corpus DIR`") from None


def _last_line(process: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (process.stderr + process.stdout).splitlines() if line.strip() and not line.startswith("W:")]
    return lines[-1].strip() if lines else f"exit code {process.returncode}"


def download_deb(package: str, work: Path, apt_state: Path) -> Path:
    """Download ``package``'s .deb into ``work`` with apt-get, as any user.

    First with the system's package lists; when they are missing or stale (a non-root user cannot
    refresh them) apt-get runs again on lists and a cache of its own under ``apt_state``.
    """
    attempt = _run(["apt-get", "download", package], work)
    if attempt.returncode != 0:
        logger.info("apt-get download with the system lists failed (%s); updating private package lists", _last_line(attempt))
        lists, cache = apt_state / "lists", apt_state / "cache"
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        (cache / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        options = ["-o", f"Dir::State::Lists={lists}", "-o", f"Dir::Cache={cache}", "-o", "Debug::NoLocking=1"]
        update = _run(["apt-get", "-q", *options, "update"], work)
        if update.returncode != 0:
            raise CorpusError(
                f"cannot update apt package lists: {_last_line(update)}; runs use the bundled demo corpus, or `deepstep run --corpus DIR`"
            )
        attempt = _run(["apt-get", *options, "download", package], work)
        if attempt.returncode != 0:
            raise CorpusError(f"cannot download {package}: {_last_line(attempt)}; runs use the bundled demo corpus, or `deepstep run --corpus DIR`")
    debs = sorted(work.glob(f"{package}_*.deb"))
    if not debs:
        raise CorpusError(f"apt-get reported success but no {package} .deb appeared in {work}")
    return debs[-1]


def extract_user_guide(deb: Path, target: Path) -> int:
    """Convert the user guide pages in ``deb`` to ``.md`` files under ``target``; return how many were written."""

    def convert(name: str, read: Callable[[], bytes]) -> bool:
        page = user_guide_page(name)
        if page is None:
            return False
        text, title = html_to_text(read())
        if not _has_prose(text):
            return False  # redirects and tables of contents
        # The page keeps its own title even where the text opens with another heading level.
        if title and not text.startswith("# "):
            text = f"# {title}\n\n{text}"
        destination = target / PurePosixPath(page).with_suffix(".md")
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(text + "\n", encoding="utf-8")
        return True

    return unpack_deb(deb, target, _DOC_ROOT / "copyright", convert)


def unpack_deb(deb: Path, target: Path, copyright_file: PurePosixPath, keep: Callable[[str, Callable[[], bytes]], bool]) -> int:
    """Stream the regular files of ``deb`` (no root, nothing unpacked to disk but what is kept): the package's
    ``copyright_file`` becomes ``target/.copyright``; every other file's path (without ``./``) and a reader of
    its bytes go to ``keep``, which writes what it wants under ``target`` and says whether it kept the file.
    Returns how many files ``keep`` kept."""
    unpack = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert unpack.stdout is not None
    kept = 0
    try:
        with tarfile.open(fileobj=unpack.stdout, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                name = member.name.removeprefix("./")

                def read(member: tarfile.TarInfo = member) -> bytes:
                    return archive.extractfile(member).read()  # type: ignore[union-attr]

                if name == str(copyright_file):
                    (target / ".copyright").write_bytes(read())
                elif keep(name, read):
                    kept += 1
    except tarfile.TarError as error:
        raise CorpusError(f"cannot read {deb.name}: {error}; delete it and fetch again") from None
    finally:
        unpack.stdout.close()
        stderr = unpack.stderr.read().decode(errors="replace") if unpack.stderr else ""
        if unpack.wait() != 0 and kept == 0:
            raise CorpusError(f"dpkg-deb cannot unpack {deb.name}: {stderr.strip() or 'unknown error'}")
    return kept


def _has_prose(text: str) -> bool:
    """Some line other than a heading or list item has a sentence's worth of words."""
    return any(len(line.split()) >= 8 for line in text.splitlines() if not line.startswith(("#", "- ")))


def _deb_version(deb: Path) -> str:
    # Debian file names are PACKAGE_VERSION_ARCH.deb with ':' in epochs escaped as %3a.
    return deb.name.split("_")[1].replace("%3a", ":") if deb.name.count("_") >= 2 else "unknown"


@dataclass(frozen=True)
class DebianCorpus:
    """A corpus made from one Debian package's files: what ``fetch_from_debian`` needs to know about it."""

    folder: Path  # HOME/corpora/NAME
    package: str
    license: str  # as the package's copyright file states it (kept as .copyright beside the corpus)
    # Turns the downloaded .deb into corpus files in the staging folder; returns the fetch record's own
    # fields, "pages" among them (raises CorpusError when the package holds none).
    extract: Callable[[Path, Path], dict[str, object]]
    # Fields a reused fetch must match (e.g. which files were kept); a fetch made with others is redone.
    options: dict[str, object] = field(default_factory=dict)


def fetch_from_debian(home: Path, corpus: DebianCorpus, *, force: bool = False, on_status: Callable[[str], None] | None = None) -> FetchResult:
    """Download ``corpus.package`` with apt-get, extract it into a staging folder and move that into place
    whole with its ``.fetched.json`` record, so a killed fetch never leaves half a corpus. A finished
    fetch with the same options is reused unless ``force``."""
    started = time.perf_counter()
    target = corpus.folder
    record = _fetch_record(target) if not force else None
    if record is not None and all(record.get(key) == value for key, value in corpus.options.items()):
        return FetchResult(target, str(record.get("version", "unknown")), _page_count(record), time.perf_counter() - started, True)
    report = on_status or (lambda message: None)
    if shutil.which("dpkg-deb") is None:
        raise CorpusError(
            f"dpkg-deb not found: `deepstep corpus fetch {target.name}` needs a Debian or Ubuntu system; runs use the bundled demo corpus, "
            "or your own folder with `deepstep run --corpus DIR`"
        )
    work = staging_folder(target.parent, ".fetch-")  # a killed fetch's folder goes here too
    try:
        report(f"downloading {corpus.package} with apt-get")
        deb = download_deb(corpus.package, work, home / "apt")
        report(f"extracting {deb.name}")
        staging = work / target.name
        staging.mkdir()
        fields = corpus.extract(deb, staging)
        version = _deb_version(deb)
        record = {
            "package": corpus.package,
            "version": version,
            **fields,
            **corpus.options,
            "license": f"{corpus.license} (see .copyright)",
            "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / _FETCH_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return FetchResult(target, version, _page_count(record), time.perf_counter() - started, False)


def _page_count(record: dict[str, object]) -> int:
    pages = record.get("pages")
    return pages if isinstance(pages, int) else 0


def _sklearn_user_guide(deb: Path, staging: Path) -> dict[str, object]:
    pages = extract_user_guide(deb, staging)
    if pages == 0:
        raise CorpusError(f"{deb.name} holds no user guide pages under /{_HTML_ROOT}: the package layout changed")
    return {"pages": pages}


def fetch_sklearn(home: Path, *, force: bool = False, on_status: Callable[[str], None] | None = None) -> FetchResult:
    """Fetch the scikit-learn user guide into ``HOME/corpora/sklearn`` (reused when present unless ``force``)."""
    corpus = DebianCorpus(sklearn_corpus_dir(home), SKLEARN_PACKAGE, "BSD-3-Clause", _sklearn_user_guide)
    return fetch_from_debian(home, corpus, force=force, on_status=on_status)


# --- the R manuals (PDF) ---

R_MANUALS_PACKAGE = "r-doc-pdf"
_R_MANUAL_ROOT = PurePosixPath("usr/share/R/doc/manual")
_R_COPYRIGHT = PurePosixPath("usr/share/doc/r-doc-pdf/copyright")
# The reference manual: every base package's help pages, 2,415 pages (6.5 MB) beside the manuals' 677.
# It is left out unless asked for (`--all`): it more than triples the passages and indexing time (2,378
# passages in 2 s, 7,934 in 7 s), and its terse help pages crowd the manuals' prose out of the top passages
# (page recall@4 on benchmarks/data/r_manuals_questions.json falls from 0.84 to 0.74). refman.pdf is the
# same file under another name and is never kept.
R_REFERENCE_MANUAL = "fullrefman.pdf"
_R_DUPLICATES = frozenset({"refman.pdf"})


def r_manuals_dir(home: Path) -> Path:
    return home / "corpora" / "r-manuals"


def r_manual_file(member: str, *, reference: bool = False) -> str | None:
    """The file name to keep when ``member`` (a path in r-doc-pdf) is one of the R manuals' PDFs."""
    path = PurePosixPath(member.removeprefix("./"))
    if path.parent != _R_MANUAL_ROOT or path.suffix != ".pdf" or path.name in _R_DUPLICATES:
        return None
    return path.name if reference or path.name != R_REFERENCE_MANUAL else None


def _pdf_page_count(path: Path) -> int:
    import pypdfium2 as pdfium

    try:
        with contextlib.closing(pdfium.PdfDocument(path)) as pdf:
            return len(pdf)
    except pdfium.PdfiumError as error:
        raise CorpusError(f"{path.name} in {R_MANUALS_PACKAGE} is not a readable PDF ({error}): the download is damaged, fetch again") from None


def _r_manuals(reference: bool) -> Callable[[Path, Path], dict[str, object]]:
    def extract(deb: Path, staging: Path) -> dict[str, object]:
        def keep(name: str, read: Callable[[], bytes]) -> bool:
            manual = r_manual_file(name, reference=reference)
            if manual is not None:
                (staging / manual).write_bytes(read())
            return manual is not None

        if unpack_deb(deb, staging, _R_COPYRIGHT, keep) == 0:
            raise CorpusError(f"{deb.name} holds no PDF manuals under /{_R_MANUAL_ROOT}: the package layout changed")
        pages = {path.name: _pdf_page_count(path) for path in sorted(staging.glob("*.pdf"))}
        return {"files": len(pages), "pages": sum(pages.values()), "manuals": pages}

    return extract


def fetch_r_manuals(home: Path, *, reference: bool = False, force: bool = False, on_status: Callable[[str], None] | None = None) -> FetchResult:
    """Fetch the R manuals' PDFs (An Introduction to R, the Language Definition, Data Import/Export,
    Installation and Administration, the FAQ, Internals, Writing R Extensions) from Debian's r-doc-pdf
    into ``HOME/corpora/r-manuals``; with ``reference`` also the 2,415-page reference manual. GPL-2, as the
    package's copyright file states; each manual's own notice permits verbatim and modified copies."""
    corpus = DebianCorpus(r_manuals_dir(home), R_MANUALS_PACKAGE, "GPL-2", _r_manuals(reference), {"reference_manual": reference})
    return fetch_from_debian(home, corpus, force=force, on_status=on_status)
