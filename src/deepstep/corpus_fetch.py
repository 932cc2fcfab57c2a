"""The scikit-learn user guide as a corpus: fetched from Debian's ``python-sklearn-doc`` package
(BSD-3-Clause) without root privileges, converted to Markdown-like text under ``HOME/corpora/sklearn``
with a ``.fetched.json`` record, and the default corpus once fetched (else the bundled demo corpus).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
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
            f"{command[0]} not found: `deepstep corpus fetch sklearn` needs a Debian or Ubuntu system; runs use the bundled "
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
    unpack = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert unpack.stdout is not None
    pages = 0
    try:
        with tarfile.open(fileobj=unpack.stdout, mode="r|*") as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                if member.isfile() and name == f"{_DOC_ROOT}/copyright":
                    (target / ".copyright").write_bytes(archive.extractfile(member).read())  # type: ignore[union-attr]
                    continue
                page = user_guide_page(name)
                if page is None or not member.isfile():
                    continue
                data = archive.extractfile(member).read()  # type: ignore[union-attr]
                text, title = html_to_text(data)
                if not _has_prose(text):
                    continue  # redirects and tables of contents
                # The page keeps its own title even where the text opens with another heading level.
                if title and not text.startswith("# "):
                    text = f"# {title}\n\n{text}"
                destination = target / PurePosixPath(page).with_suffix(".md")
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_text(text + "\n", encoding="utf-8")
                pages += 1
    except tarfile.TarError as error:
        raise CorpusError(f"cannot read {deb.name}: {error}; delete it and fetch again") from None
    finally:
        unpack.stdout.close()
        stderr = unpack.stderr.read().decode(errors="replace") if unpack.stderr else ""
        if unpack.wait() != 0 and pages == 0:
            raise CorpusError(f"dpkg-deb cannot unpack {deb.name}: {stderr.strip() or 'unknown error'}")
    return pages


def _has_prose(text: str) -> bool:
    """Some line other than a heading or list item has a sentence's worth of words."""
    return any(len(line.split()) >= 8 for line in text.splitlines() if not line.startswith(("#", "- ")))


def _deb_version(deb: Path) -> str:
    # Debian file names are PACKAGE_VERSION_ARCH.deb with ':' in epochs escaped as %3a.
    return deb.name.split("_")[1].replace("%3a", ":") if deb.name.count("_") >= 2 else "unknown"


def fetch_sklearn(home: Path, *, force: bool = False, on_status: Callable[[str], None] | None = None) -> FetchResult:
    """Fetch the scikit-learn user guide into ``HOME/corpora/sklearn`` (reused when present unless ``force``)."""
    started = time.perf_counter()
    target = sklearn_corpus_dir(home)
    record = _fetch_record(target) if not force else None
    if record is not None:
        return FetchResult(target, str(record.get("version", "unknown")), int(record.get("pages") or 0), time.perf_counter() - started, True)
    report = on_status or (lambda message: None)
    if shutil.which("dpkg-deb") is None:
        raise CorpusError(
            "dpkg-deb not found: `deepstep corpus fetch sklearn` needs a Debian or Ubuntu system; runs use the bundled demo corpus, "
            "or your own folder with `deepstep run --corpus DIR`"
        )
    work = staging_folder(target.parent, ".fetch-")  # a killed fetch's folder goes here too
    try:
        report(f"downloading {SKLEARN_PACKAGE} with apt-get")
        deb = download_deb(SKLEARN_PACKAGE, work, home / "apt")
        report(f"converting the user guide pages of {deb.name}")
        staging = work / "sklearn"
        staging.mkdir()
        pages = extract_user_guide(deb, staging)
        if pages == 0:
            raise CorpusError(f"{deb.name} holds no user guide pages under /{_HTML_ROOT}: the package layout changed")
        version = _deb_version(deb)
        record = {
            "package": SKLEARN_PACKAGE,
            "version": version,
            "pages": pages,
            "license": "BSD-3-Clause (see .copyright)",
            "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / _FETCH_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return FetchResult(target, version, pages, time.perf_counter() - started, False)
