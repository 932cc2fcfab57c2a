"""Which PDF text extractor should deepstep use? Text quality, pages per second and peak RSS on published PDFs.

Run: .venv/bin/python -m benchmarks.pdf_libraries [--documents R-intro.pdf fullrefman.pdf] [--libraries pypdf pdfminer pypdfium2]
     [--broken] [--extra OTHER.pdf ...] [--json FILE] [--cache DIR] [--time-limit SECONDS]

The documents are the R manuals of Debian's ``r-doc-pdf`` package, downloaded without root the way
``deepstep corpus fetch sklearn`` downloads its .deb (``corpus_fetch.download_deb``) into a cache under
DEEPSTEP_HOME. Each library reads each document in a child process of its own, page by page, keeping
only running counts and two sample pages, so the child's peak RSS (``os.wait4``) is the library's
memory for that document and not the text's. ``--broken`` also reads a truncated, a corrupt, a
non-PDF, two encrypted and an image-only ("scanned") file, to show how each library reports them.

Text quality signals per library (the same document, so differences are the library's):
pages with text, letter words (dropped text shows as fewer), ligature characters left (ﬁ ﬂ ...), words broken at
a line end ("-" newline lowercase), soft-hyphen markers (a library that marks a line-end hyphen lets the cleaner
join the word exactly), long letter-only tokens (words run together), non-printable characters, and glyphs not
mapped to Unicode (U+FFFD, private use, pdfminer's "(cid:N)"),
and on a two-column index page the share of adjacent entries in alphabetical order (columns read in
order give nearly 1.0; columns interleaved line by line give about 0.5).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PACKAGE = "r-doc-pdf"
MANUAL_FOLDER = "usr/share/R/doc/manual/"
LIBRARIES = ("pypdf", "pdfminer", "pypdfium2")
DOCUMENTS = ("R-intro.pdf", "R-lang.pdf", "R-exts.pdf", "fullrefman.pdf")
# 1-based physical pages to show: a body page under a running header, then a two-column index page (its reading order is scored).
SAMPLE_PAGES = {"R-intro.pdf": (11, 109), "R-lang.pdf": (10, 66), "R-exts.pdf": (20, 231), "fullrefman.pdf": (501, 2401)}
SAMPLE_CHARACTERS = 300
LIGATURES = "\ufb00\ufb01\ufb02\ufb03\ufb04\ufb05\ufb06"  # ﬀ ﬁ ﬂ ﬃ ﬄ ﬅ ﬆ
SOFT_HYPHENS = "\u00ad\ufffe\x02"  # what libraries put where a word was hyphenated at a line end
LONG_TOKEN = re.compile(r"(?<![\w.])[A-Za-z]{25,}(?![\w.])")
HYPHEN_BREAK = re.compile(r"[A-Za-z]-\n[a-z]")
LETTER_WORD = re.compile(r"[^\W\d_]{2,}")  # dot leaders and numbers are not words
UNMAPPED_GLYPH = re.compile(r"\(cid:\d+\)")  # how pdfminer writes a glyph it cannot map to Unicode


# --- the libraries: each yields one page's text at a time -------------------------------------


def pages_pypdf(path: Path) -> Iterator[str]:
    from pypdf import PdfReader

    reader = PdfReader(path)
    for page in reader.pages:
        yield page.extract_text()


def pages_pdfminer(path: Path) -> Iterator[str]:
    from pdfminer.high_level import extract_pages
    from pdfminer.layout import LTTextContainer

    for layout in extract_pages(path):
        yield "".join(element.get_text() for element in layout if isinstance(element, LTTextContainer))


def pages_pypdfium2(path: Path) -> Iterator[str]:
    import pypdfium2

    document = pypdfium2.PdfDocument(path)
    try:
        for index in range(len(document)):
            page = document[index]
            text_page = page.get_textpage()
            # PDFium ends lines with CRLF whatever the platform.
            yield text_page.get_text_range().replace("\r\n", "\n")
            text_page.close()
            page.close()
    finally:
        document.close()


READERS: dict[str, Callable[[Path], Iterator[str]]] = {"pypdf": pages_pypdf, "pdfminer": pages_pdfminer, "pypdfium2": pages_pypdfium2}
IMPORTS = {"pypdf": "pypdf", "pdfminer": "pdfminer.high_level", "pypdfium2": "pypdfium2"}


# --- text quality, one page at a time ------------------------------------------------------------


def index_order(text: str) -> float | None:
    """Share of adjacent index entries (first word of each line) in alphabetical order; None with too few entries."""
    keys = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0][0].isalpha():
            keys.append(re.sub(r"[^a-z0-9]", "", words[0].lower()))
    pairs = list(zip(keys, keys[1:], strict=False))
    return sum(first <= second for first, second in pairs) / len(pairs) if len(pairs) >= 10 else None


class PageStats:
    """Running counts over a document's pages; holds no page text beyond the samples."""

    def __init__(self, sample_pages: tuple[int, ...]) -> None:
        self.sample_pages = sample_pages
        self.pages = 0
        self.pages_with_text = 0
        self.characters = 0
        self.words = 0
        self.ligatures = 0
        self.hyphen_breaks = 0
        self.soft_hyphens = 0
        self.long_tokens: Counter[str] = Counter()
        self.nonprintable: Counter[str] = Counter()
        self.unmapped = 0
        self.samples: dict[int, str] = {}
        self.index_order: dict[int, float | None] = {}

    def add(self, text: str) -> None:
        self.pages += 1
        if text.strip():
            self.pages_with_text += 1
        self.characters += len(text)
        self.words += len(LETTER_WORD.findall(text))
        self.ligatures += sum(text.count(ligature) for ligature in LIGATURES)
        self.hyphen_breaks += len(HYPHEN_BREAK.findall(text))
        self.soft_hyphens += sum(text.count(mark) for mark in SOFT_HYPHENS)
        self.long_tokens.update(LONG_TOKEN.findall(text))
        self.unmapped += len(UNMAPPED_GLYPH.findall(text))
        for character in text:
            category = unicodedata.category(character)
            if character == "\ufffd" or category == "Co":
                self.unmapped += 1
            # Spaces of any width and line breaks are layout, not noise.
            elif not character.isprintable() and category != "Zs" and character not in "\n\t" + SOFT_HYPHENS:
                self.nonprintable[character] += 1
        if self.pages in self.sample_pages:
            self.samples[self.pages] = text[:SAMPLE_CHARACTERS]
        if len(self.sample_pages) >= 2 and self.pages == self.sample_pages[1]:
            self.index_order[self.pages] = index_order(text)

    def as_dict(self) -> dict[str, Any]:
        return {
            "pages": self.pages,
            "pages_with_text": self.pages_with_text,
            "characters": self.characters,
            "words": self.words,
            "ligatures": self.ligatures,
            "hyphen_breaks": self.hyphen_breaks,
            "soft_hyphens": self.soft_hyphens,
            "long_tokens": sum(self.long_tokens.values()),
            "long_token_examples": [token for token, _ in self.long_tokens.most_common(3)],
            "nonprintable": sum(self.nonprintable.values()),
            "nonprintable_examples": [f"{ord(character):04X}" for character, _ in self.nonprintable.most_common(3)],
            "unmapped": self.unmapped,
            "samples": self.samples,
            "index_order": self.index_order,
        }


def _high_water_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run_child(library: str, path: Path, sample_pages: tuple[int, ...], time_limit: float | None) -> dict[str, Any]:
    """Read ``path`` with ``library`` in this process; never raises: a failure is reported with the page it happened on."""
    warnings: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    # pypdf and pdfminer report recoverable damage as log warnings; count them instead of printing them.
    for name in ("pypdf", "pdfminer"):
        logger = logging.getLogger(name)
        logger.addHandler(Collect(logging.WARNING))
        logger.propagate = False
    __import__(IMPORTS[library])
    result: dict[str, Any] = {"library": library, "document": path.name, "baseline_rss_kib": _high_water_kib(), "error": None, "stopped": False}
    stats = PageStats(sample_pages)
    started = time.perf_counter()
    # The library's time alone (the quality counts are this script's cost); CPU time too, as the machine may be shared.
    extracting = extracting_cpu = 0.0
    try:
        pages = READERS[library](path)
        while True:
            before, before_cpu = time.perf_counter(), time.process_time()
            text = next(pages, None)
            extracting += time.perf_counter() - before
            extracting_cpu += time.process_time() - before_cpu
            if text is None:
                break
            stats.add(text)
            if time_limit is not None and time.perf_counter() - started > time_limit:
                result["stopped"] = True
                break
    except Exception as error:  # the point is to record whatever each library raises
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        where = "opening" if stats.pages == 0 else f"page {stats.pages + 1}"
        result["error"] = f"{where}: {type(error).__module__}.{type(error).__qualname__}: {message}"[:300]
    result["seconds"] = extracting
    result["cpu_seconds"] = extracting_cpu
    result["wall_seconds"] = time.perf_counter() - started
    result["warnings"] = len(warnings)
    result["first_warning"] = warnings[0][:200] if warnings else None
    result.update(stats.as_dict())
    return result


def measure(library: str, path: Path, sample_pages: tuple[int, ...], time_limit: float | None) -> dict[str, Any]:
    """Run one library on one document in a child process; add its peak RSS (from the kernel's accounting of that child)."""
    command = [sys.executable, "-m", "benchmarks.pdf_libraries", "--child", library, str(path), "--sample-pages", *map(str, sample_pages)]
    if time_limit is not None:
        command += ["--time-limit", str(time_limit)]
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(command, cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, stderr=stderr)
        assert child.stdout is not None
        output = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        child.stdout.close()
        stderr.seek(0)
        error_text = stderr.read().decode(errors="replace").strip()
    if child.returncode != 0 or not output.strip():
        last = error_text.splitlines()[-1] if error_text else f"exit code {child.returncode}"
        return {"library": library, "document": path.name, "error": f"child process died: {last}", "peak_rss_kib": usage.ru_maxrss}
    result: dict[str, Any] = json.loads(output)
    result["peak_rss_kib"] = usage.ru_maxrss  # Linux reports KiB
    result["pages_per_second"] = result["pages"] / result["seconds"] if result["seconds"] > 0 else None
    result["pages_per_cpu_second"] = result["pages"] / result["cpu_seconds"] if result["cpu_seconds"] > 0 else None
    return result


# --- the documents -------------------------------------------------------------------------------


def fetch_manuals(cache: Path, names: list[str]) -> tuple[str, dict[str, Path]]:
    """Download r-doc-pdf's .deb into ``cache`` (once) and unpack the named manuals; return the package version and their paths."""
    from deepstep.corpus_fetch import download_deb

    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{PACKAGE}_*.deb"))
    deb = debs[-1] if debs else download_deb(PACKAGE, cache, cache / "apt")
    version = deb.name.split("_")[1].replace("%3a", ":")
    target = cache / f"{PACKAGE}-{version}"
    target.mkdir(exist_ok=True)
    wanted = {name for name in names if not (target / name).exists()}
    if wanted:
        unpack = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        assert unpack.stdout is not None
        with tarfile.open(fileobj=unpack.stdout, mode="r|*") as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                if member.isfile() and name.startswith(MANUAL_FOLDER) and name.removeprefix(MANUAL_FOLDER) in wanted:
                    (target / name.removeprefix(MANUAL_FOLDER)).write_bytes(archive.extractfile(member).read())  # type: ignore[union-attr]
        unpack.stdout.close()
        unpack.wait()
    missing = [name for name in names if not (target / name).exists()]
    if missing:
        raise SystemExit(f"{PACKAGE} {version} has no {', '.join(missing)} under /{MANUAL_FOLDER}")
    return version, {name: target / name for name in names}


def make_broken_files(source: Path, folder: Path) -> dict[str, Path]:
    """Damaged and unreadable variants of ``source``, the cases deepstep must skip with a one-line reason."""
    from pypdf import PdfReader, PdfWriter

    folder.mkdir(parents=True, exist_ok=True)
    data = source.read_bytes()
    files = {
        "truncated (first half of the bytes)": data[: len(data) // 2],
        "corrupt (middle 10% of the bytes zeroed)": data[: len(data) * 45 // 100] + bytes(len(data) // 10) + data[len(data) * 55 // 100 :],
        "not a PDF (HTML named .pdf)": b"<!doctype html><html><body><p>Not found</p></body></html>\n",
        "empty file": b"",
    }
    paths = {}
    for number, (case, content) in enumerate(files.items()):
        paths[case] = folder / f"broken-{number}.pdf"
        paths[case].write_bytes(content)
    for case, user_password in (("encrypted, AES-256, user password", "secret"), ("encrypted, owner password only (opens without one)", "")):
        writer = PdfWriter(clone_from=PdfReader(source))
        writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="AES-256")
        paths[case] = folder / f"encrypted-{len(paths)}.pdf"
        with paths[case].open("wb") as handle:
            writer.write(handle)
    paths["scanned (page images, no text layer)"] = _image_only_pdf(source, folder / "scanned.pdf")
    return paths


def _image_only_pdf(source: Path, destination: Path) -> Path:
    import pypdfium2

    document = pypdfium2.PdfDocument(source)
    images = [document[index].render(scale=100 / 72).to_pil().convert("L") for index in (10, 11)]
    document.close()
    images[0].save(destination, save_all=True, append_images=images[1:], resolution=100)
    return destination


# --- output ----------------------------------------------------------------------------------------


def _mib(kib: int | None) -> str:
    return f"{kib / 1024:.0f}" if kib else "-"


def markdown(results: list[dict[str, Any]], version: str, sizes: dict[str, int]) -> str:
    lines = [f"Documents: Debian {PACKAGE} {version}.", ""]
    documents = list(dict.fromkeys(result["document"] for result in results))
    for document in documents:
        rows = [result for result in results if result["document"] == document]
        pages = max(row.get("pages", 0) for row in rows)
        lines += [f"### {document} ({pages} pages, {sizes.get(document, 0) / 1e6:.1f} MB)", ""]
        lines.append(
            "| library | pages/s (per CPU s) | peak RSS MiB (after import) | empty pages | words | ligatures | hyphen breaks | soft-hyphen marks "
            "| long tokens | non-printable | unmapped | index order | error |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for row in rows:
            if "pages" not in row:
                lines.append(f"| {row['library']} | | {_mib(row.get('peak_rss_kib'))} | | | | | | | | | | {row['error']} |")
                continue
            orders = [f"{value:.2f}" for value in row["index_order"].values() if value is not None]
            stopped = f" (stopped after {row['pages']} pages)" if row["stopped"] else ""
            lines.append(
                f"| {row['library']} | {row['pages_per_second']:.1f} ({row['pages_per_cpu_second']:.1f}){stopped} "
                f"| {_mib(row['peak_rss_kib'])} ({_mib(row['baseline_rss_kib'])}) "
                f"| {row['pages'] - row['pages_with_text']} | {row['words']} | {row['ligatures']} | {row['hyphen_breaks']} | {row['soft_hyphens']} "
                f"| {row['long_tokens']} {', '.join(row['long_token_examples'])} "
                f"| {row['nonprintable']} {' '.join(row['nonprintable_examples'])} | {row['unmapped']} "
                f"| {' '.join(orders) or '-'} | {row['error'] or ''} |"
            )
        lines.append("")
    return "\n".join(lines)


def broken_markdown(results: list[dict[str, Any]], cases: dict[str, Path]) -> str:
    lines = ["### Broken and unreadable files", "", "| file | " + " | ".join(LIBRARIES) + " |", "|---|" + "---|" * len(LIBRARIES)]
    for case, path in cases.items():
        cells = []
        for library in LIBRARIES:
            row = next((result for result in results if result["library"] == library and result["document"] == path.name), None)
            if row is None:
                cells.append("-")
            elif row.get("error"):
                cells.append(f"{row['error']} (pages before: {row.get('pages', 0)}, warnings: {row.get('warnings', 0)})".replace("|", "/"))
            else:
                cells.append(f"read {row['pages']} pages, {row['pages_with_text']} with text, {row['warnings']} warnings".replace("|", "/"))
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--documents", nargs="+", default=list(DOCUMENTS))
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES))
    parser.add_argument("--broken", action="store_true", help="also read damaged, encrypted and image-only files")
    parser.add_argument("--extra", nargs="+", type=Path, default=[], help="other PDFs to read as well (page 40 is shown)")
    parser.add_argument("--cache", type=Path, help="where the .deb and the manuals go (default DEEPSTEP_HOME/cache/pdf-benchmark)")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--time-limit", type=float, help="stop each library after this many seconds on a document")
    parser.add_argument("--child", nargs=2, metavar=("LIBRARY", "PDF"), help=argparse.SUPPRESS)
    parser.add_argument("--sample-pages", nargs="*", type=int, default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        library, path = args.child
        print(json.dumps(run_child(library, Path(path), tuple(args.sample_pages), args.time_limit)))
        return

    if args.cache is None:
        from deepstep.configuration import Settings

        args.cache = Settings().home / "cache" / "pdf-benchmark"
    version, paths = fetch_manuals(args.cache, args.documents)
    paths.update({path.name: path for path in args.extra})
    results = []
    for name, path in paths.items():
        for library in args.libraries:
            print(f"{library} reading {name}...", file=sys.stderr, flush=True)
            results.append(measure(library, path, SAMPLE_PAGES.get(name, (40,)), args.time_limit))
    print(markdown(results, version, {name: path.stat().st_size for name, path in paths.items()}))
    broken: list[dict[str, Any]] = []
    if args.broken:
        cases = make_broken_files(paths.get("R-intro.pdf") or next(iter(paths.values())), args.cache / "broken")
        for case, path in cases.items():
            for library in LIBRARIES:
                print(f"{library} reading {case}...", file=sys.stderr, flush=True)
                broken.append(measure(library, path, (), args.time_limit))
        print(broken_markdown(broken, cases))
    if args.json:
        args.json.write_text(json.dumps({"package": PACKAGE, "version": version, "results": results, "broken": broken}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
