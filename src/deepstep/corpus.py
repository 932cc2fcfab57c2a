"""Corpus ingestion: a folder of Markdown, text, reStructuredText, HTML, PDF, Word, PowerPoint, Excel and
EPUB files becomes passages; paged formats keep each passage's page (``deepstep.documents`` reads them).

Also where the bundled demo corpus is. Fetching the scikit-learn user guide (and choosing it as the
default corpus once fetched) is in ``deepstep.corpus_fetch``.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
import re
import stat
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, NamedTuple

from deepstep.atomic_files import write_json_atomically
from deepstep.documents import DOCUMENT_SUFFIXES, NO_TEXT_LAYER, PDF_SUFFIXES, Page, UnreadableDocument, read_document_pages
from deepstep.errors import CorpusError

# BeautifulSoup is imported where HTML is parsed: a cached index, and every command that only
# needs the corpus' paths (`deepstep show`, `corpus search`), never loads it.
if TYPE_CHECKING:
    from bs4 import Tag


TEXT_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".rst"})
HTML_SUFFIXES = frozenset({".html", ".htm", ".xhtml"})
CORPUS_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | DOCUMENT_SUFFIXES
FORMATS = "Markdown, text, reStructuredText, HTML, PDF, Word, PowerPoint, Excel or EPUB files"
DEFAULT_CHUNK_TOKENS = 180
DEFAULT_CHUNK_OVERLAP = 30
# Bounds that keep indexing linear in the corpus size: a bigger file, or HTML nested deeper, is
# skipped with its reason (turning deep nesting into text is quadratic, and real pages nest < 50 deep).
# A PDF or Office file is mostly layout and images: it may be larger for the same text.
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_DOCUMENT_BYTES = 256 * 1024 * 1024
# HTML costs about 10 µs a byte to parse and flatten (BeautifulSoup), text files far less.
MAX_HTML_BYTES = 4 * 1024 * 1024
MAX_HTML_DEPTH = 256

# Why a file was skipped, as `deepstep corpus index` reports it.
EMPTY = "empty, binary or undecodable"
PERMISSION_DENIED = "permission denied"
UNREADABLE = "unreadable"
LINK_OUTSIDE = "links leaving the corpus folder"
SPECIAL_FILE = "not regular files (FIFOs, devices, sockets)"
TOO_LARGE = f"larger than {MAX_FILE_BYTES // 2**20} MB"
DOCUMENT_TOO_LARGE = f"PDF or Office files larger than {MAX_DOCUMENT_BYTES // 2**20} MB"
HTML_TOO_LARGE = f"HTML larger than {MAX_HTML_BYTES // 2**20} MB"
TOO_DEEP = f"HTML nested over {MAX_HTML_DEPTH} deep"

# Scripts written without spaces between words; their characters count as one token each.
CJK_CHARACTERS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
# One chunking unit: a CJK character or a run of other non-space characters (roughly one token).
UNIT = re.compile(rf"[{CJK_CHARACTERS}]|[^\s{CJK_CHARACTERS}]+")
# Greedy and anchored: the closing "#"s and spaces are stripped in Python (a lazy group followed by
# [ \t#]*$ backtracked quadratically on a long heading).
_MD_TITLE = re.compile(r"^#[ \t]+(.*)$", re.MULTILINE)
_RST_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+:.])\1{2,}\s*$")
_HTML_CHARSET = re.compile(rb"""<meta[^>]+charset=["']?([\w-]+)""", re.IGNORECASE)


@dataclass(frozen=True)
class Passage:
    """One chunk of one document. ``ref_id`` names the document, ``chunk_id`` the passage; ``source`` is
    the document's path relative to the corpus root (POSIX separators), so all three survive a move."""

    ref_id: str
    chunk_id: str
    title: str
    source: str
    text: str
    page: int | None = None  # paged documents: the 1-based physical page (a slide's number) where it starts
    page_end: int | None = None  # the page where it ends, when that is another
    sheet: str | None = None  # workbooks: the sheet's name


# --- HTML to text ---

# Page furniture, never content.
_DROPPED_TAGS = (
    "head",
    "script",
    "style",
    "noscript",
    "template",
    "nav",
    "header",
    "footer",
    "form",
    "button",
    "input",
    "select",
    "textarea",
    "svg",
    "canvas",
    "iframe",
    "object",
    "embed",
    "img",
    "picture",
    "video",
    "audio",
)
_DROPPED_SELECTORS = (
    '[role="navigation"]',
    '[role="search"]',
    '[role="banner"]',
    '[role="contentinfo"]',
    '[aria-hidden="true"]',
    ".headerlink",
    ".section-number",
    ".sphinxsidebar",
    ".related",
    ".breadcrumb",
    ".breadcrumbs",
    ".skip-link",
    ".sk-sidebar-toc-wrapper",
    ".rellinks",
    ".cookie-banner",
    ".sphx-glr-download-link-note",
    ".sphx-glr-footer",
)
# The element holding a page's own text, most specific first; the whole body otherwise.
_MAIN_SELECTORS = ("main", '[role="main"]', "article", "div.body", "#main-content", "#content")
_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_BLOCKS = frozenset(
    {
        "p",
        "div",
        "section",
        "article",
        "main",
        "blockquote",
        "ul",
        "ol",
        "dl",
        "dt",
        "dd",
        "li",
        "table",
        "thead",
        "tbody",
        "figure",
        "figcaption",
        "details",
        "summary",
        "aside",
        "hr",
        "address",
    }
)
_PRE_MARK = "\x00PRE{}\x00"
_PRE_MARK_PATTERN = re.compile("\x00PRE(\\d+)\x00")


def html_to_text(html: str | bytes) -> tuple[str, str | None]:
    """Readable text of an HTML page with navigation and boilerplate dropped, headings as ``#`` lines,
    one blank line between blocks and preformatted text kept verbatim. Returns ``(text, title)``."""
    from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning, Tag

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        soup = BeautifulSoup(html, "html.parser")
    if _deeper_than(soup, MAX_HTML_DEPTH):
        raise NestedTooDeeply(f"the HTML is nested over {MAX_HTML_DEPTH} elements deep")
    page_title = soup.title.get_text(" ", strip=True) if soup.title else None
    if soup.find("meta", attrs={"http-equiv": re.compile("^refresh$", re.IGNORECASE)}):
        return "", page_title  # a redirect stub: its text only says where the content moved
    # Sphinx renders topics and notes as <aside>; other asides are sidebars.
    sidebars = [aside for aside in soup.find_all("aside") if not {"topic", "admonition", "note"} & set(aside.get("class") or ())]
    for element in [*soup.find_all(_DROPPED_TAGS), *soup.select(", ".join(_DROPPED_SELECTORS)), *sidebars]:
        if not element.decomposed:  # a dropped element may sit inside another
            element.decompose()
    root = next((found for selector in _MAIN_SELECTORS if (found := soup.select_one(selector))), None) or soup.body or soup
    heading = root.find("h1")
    title = heading.get_text(" ", strip=True) if isinstance(heading, Tag) else page_title
    text = _flatten(root)
    return text, (title or None)


class NestedTooDeeply(ValueError):
    """HTML too deeply nested to turn into text in linear time."""


def _deeper_than(soup: Tag, limit: int) -> bool:
    """Whether any element sits more than ``limit`` levels deep (an explicit stack: no recursion limit)."""
    from bs4 import Tag

    stack = [(soup, 0)]
    while stack:
        element, depth = stack.pop()
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in element.contents if isinstance(child, Tag))
    return False


def _flatten(root: Tag) -> str:
    from bs4 import NavigableString

    preformatted: list[str] = []
    for pre in root.find_all("pre"):
        preformatted.append(pre.get_text().strip("\n"))
        pre.replace_with(NavigableString(f"\n\n{_PRE_MARK.format(len(preformatted) - 1)}\n\n"))
    for string in root.find_all(string=True):
        if "\x00PRE" not in string:
            string.replace_with(re.sub(r"\s+", " ", string))
    for name, level in _HEADINGS.items():
        for heading in root.find_all(name):
            heading.replace_with(NavigableString(f"\n\n{'#' * level} {heading.get_text(' ', strip=True)}\n\n"))
    for br in root.find_all("br"):
        br.replace_with(NavigableString("\n"))
    for item in root.find_all("li"):
        item.insert(0, NavigableString("- "))
    # A table row becomes one line: "cell | cell |".
    for cell in root.find_all(("td", "th")):
        cell.replace_with(NavigableString(cell.get_text(" ", strip=True) + " | "))
    for row in root.find_all("tr"):
        row.insert(0, NavigableString("\n"))
        row.unwrap()
    for block in root.find_all(_BLOCKS):
        block.insert(0, NavigableString("\n\n"))
        block.append(NavigableString("\n\n"))
    lines = [line.strip() for line in root.get_text().split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    # A list item's own paragraphs start on its bullet line; items stay one per line, not a paragraph each.
    text = re.sub(r"^- *\n+", "- ", text, flags=re.MULTILINE)
    text = re.sub(r"\n\n(?=- )", "\n", text)
    return _PRE_MARK_PATTERN.sub(lambda match: preformatted[int(match.group(1))], text)


# --- reading files ---


def _title(text: str, fallback: str) -> str:
    for match in _MD_TITLE.finditer(text):
        if heading := match.group(1).rstrip(" \t#").strip():
            return heading
    for line, below in itertools.pairwise(text.splitlines()):
        heading = line.strip()
        underlined = _RST_ADORNMENT.match(below) and len(below.strip()) >= len(heading)
        if heading and underlined and not _RST_ADORNMENT.match(heading):
            return heading
    return fallback


def _decode(data: bytes, html: bool) -> str | None:
    if b"\x00" in data:
        return None  # binary
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    # HTML may declare its own encoding; plain text must be UTF-8.
    declared = _HTML_CHARSET.search(data[:4096]) if html else None
    if declared:
        try:
            return data.decode(declared.group(1).decode("ascii"))
        except (LookupError, UnicodeDecodeError):
            return None
    return None


def document_text(data: bytes, name: str) -> tuple[str, str] | str:
    """``(title, text)`` of one corpus file's bytes, or why it is skipped (``EMPTY``, ``TOO_DEEP``)."""
    is_html = PurePosixPath(name).suffix.lower() in HTML_SUFFIXES
    if is_html and len(data) > MAX_HTML_BYTES:
        return HTML_TOO_LARGE
    text = _decode(data, is_html)
    if text is None:
        return EMPTY
    title: str | None = None
    if is_html:
        try:
            text, title = html_to_text(text)
        except NestedTooDeeply:
            return TOO_DEEP
    if not text.strip():
        return EMPTY
    return title or _title(text, PurePosixPath(name).stem), text


def read_document(path: Path) -> tuple[str, str] | None:
    """``(title, text)`` of one corpus file, or ``None`` when it is skipped (see ``read_corpus`` for why)."""
    data = read_regular_file(path)
    document = document_text(data, path.name) if isinstance(data, bytes) else data
    return document if isinstance(document, tuple) else None


def read_regular_file(path: Path, limit: int = MAX_FILE_BYTES) -> bytes | str:
    """The bytes of a regular file, or why it cannot be read. Opened without blocking and checked after
    opening, so a FIFO or device put in a file's place is never waited on or read."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except PermissionError:
        return PERMISSION_DENIED
    except OSError:
        return UNREADABLE
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode):
            return SPECIAL_FILE
        too_large = TOO_LARGE if limit == MAX_FILE_BYTES else DOCUMENT_TOO_LARGE
        if info.st_size > limit:
            return too_large
        with os.fdopen(handle, "rb", closefd=False) as stream:
            data = stream.read(limit + 1)
        return too_large if len(data) > limit else data
    except OSError:
        return UNREADABLE
    finally:
        os.close(handle)


def corpus_root(corpus_dir: str | Path) -> Path:
    root = Path(corpus_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise CorpusError(f"corpus {root} is a file, not a folder: give the folder of {FORMATS}")
    if not root.is_dir():
        raise CorpusError(f"corpus folder {root} does not exist: give the path of a folder of {FORMATS}")
    return root


def printable_name(relative: str) -> str:
    """A relative path that is valid UTF-8 text: bytes of a non-UTF-8 file name (kept by Python as
    surrogates) become ``\\xNN`` escapes, so ids, the index cache and checkpoints can hold it."""
    return os.fsencode(relative).decode("utf-8", "backslashreplace")


@dataclass
class CorpusScan:
    """The corpus files to read, as (printable relative POSIX path, path), sorted, and what was skipped on the way."""

    files: list[tuple[str, Path]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


def scan_corpus(root: Path) -> CorpusScan:
    """Walk ``root`` without recursion (any depth) and without leaving it: hidden entries are ignored,
    symlinks are followed only to files and folders inside ``root`` (each folder once, so link loops
    end), and only regular files with a corpus suffix are kept."""
    real_root = Path(os.path.realpath(root))
    scan = CorpusScan()
    seen_folders = {(real_root.stat().st_dev, real_root.stat().st_ino)}
    pending = [(root, PurePosixPath())]
    while pending:
        folder, relative = pending.pop()
        try:
            with os.scandir(folder) as entries:
                listing = sorted(entries, key=lambda entry: entry.name)
        except PermissionError:
            scan.skipped[PERMISSION_DENIED] += 1
            continue
        except OSError:
            scan.skipped[UNREADABLE] += 1
            continue
        for entry in listing:
            if entry.name.startswith("."):
                continue
            path, name = Path(entry.path), relative / entry.name
            if entry.is_symlink() and not Path(os.path.realpath(path)).is_relative_to(real_root):
                scan.skipped[LINK_OUTSIDE] += 1
                continue
            try:
                info = path.stat()  # follows a link (inside the root)
            except OSError:
                continue  # a dangling link or a file removed meanwhile
            if stat.S_ISDIR(info.st_mode):
                if (info.st_dev, info.st_ino) not in seen_folders:
                    seen_folders.add((info.st_dev, info.st_ino))
                    pending.append((path, name))
            elif name.suffix.lower() in CORPUS_SUFFIXES:
                if stat.S_ISREG(info.st_mode):
                    scan.files.append((printable_name(name.as_posix()), path))
                else:
                    scan.skipped[SPECIAL_FILE] += 1
    scan.files.sort()
    return scan


def corpus_files(root: Path) -> list[tuple[str, Path]]:
    """Candidate files as (relative POSIX path, path), sorted; hidden files and folders are ignored."""
    return scan_corpus(root).files


@dataclass
class CorpusContent:
    """Every corpus file's bytes as read once: the index cache key hashes these, and the passages are
    built from these, so a file rewritten meanwhile cannot make the two disagree."""

    root: Path
    files: list[tuple[str, bytes]]
    skipped: Counter[str]


def read_corpus(root: Path) -> CorpusContent:
    scan = scan_corpus(root)
    content = CorpusContent(root, [], Counter(scan.skipped))
    for source, path in scan.files:
        data = read_regular_file(path, MAX_DOCUMENT_BYTES if path.suffix.lower() in DOCUMENT_SUFFIXES else MAX_FILE_BYTES)
        if isinstance(data, bytes):
            content.files.append((source, data))
        else:
            content.skipped[data] += 1
    return content


# A digest is remembered with its file's stat only once the file is this old: a write within the file system's
# timestamp granularity of the hashing could otherwise go unseen ("racy git").
SETTLED_NS = 2_000_000_000
FileDigest = list[int | str]  # [size, mtime_ns, ctime_ns, inode, sha256]; the stat is -1s when not to be trusted


def file_digests(root: Path, skipped: Counter[str], known: dict[str, FileDigest] | None = None) -> dict[str, FileDigest]:
    """Every readable corpus file's SHA-256 with its stat, by path in corpus order; each skipped file (on the
    scan or on reading) is counted into ``skipped``. A file whose size, mtime, ctime and inode are those ``known``
    recorded keeps its digest without being read (as git's index does: ctime changes on every write, and no
    tool sets it back); the others are read and hashed one at a time, so a large corpus is never held in memory."""
    scan = scan_corpus(root)
    skipped.update(scan.skipped)
    settled_before = time.time_ns() - SETTLED_NS
    found: dict[str, FileDigest] = {}
    for source, path in scan.files:
        try:
            info = path.stat()
            stamp: list[int] = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]
        except OSError:
            stamp = [-1, -1, -1, -1]  # read_regular_file says why below
        previous = (known or {}).get(source)
        if previous is not None and stamp[0] >= 0 and previous[:4] == stamp:
            found[source] = previous
            continue
        data = read_regular_file(path, MAX_DOCUMENT_BYTES if path.suffix.lower() in DOCUMENT_SUFFIXES else MAX_FILE_BYTES)
        if not isinstance(data, bytes):
            skipped[data] += 1
            continue
        settled = stamp[0] >= 0 and stamp[2] < settled_before
        found[source] = [*(stamp if settled else [-1, -1, -1, -1]), hashlib.sha256(data).hexdigest()]
    return found


def saved_file_digests(root: Path, cache_dir: Path, skipped: Counter[str]) -> dict[str, FileDigest]:
    """``file_digests`` with the digests of files unchanged since the last start taken from those it saved under
    ``cache_dir`` (a later start then reads no file: 0.3 s less at 100x the scikit-learn guide)."""
    saved = cache_dir / f".files-{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]}.json"
    try:
        known = json.loads(saved.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    digests = file_digests(root, skipped, known if isinstance(known, dict) else {})
    if digests != known:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomically(saved, digests)
        except OSError:
            pass  # the next start reads every file again
    return digests


def corpus_key(file_digests: Iterable[tuple[str, str]], skipped: Counter[str], *settings: object) -> str:
    """What identifies a corpus's content to a cache (the BM25 index, a corpus loaded into Postgres): every file's
    path and SHA-256, the skipped files, and ``settings`` (the chunking, the cache's format)."""
    digest = hashlib.sha256(json.dumps([*settings, sorted(skipped.items())]).encode())
    for source, file_digest in file_digests:
        digest.update(f"{source}\0{file_digest}\n".encode())
    return digest.hexdigest()


def describe_skipped(skipped: Counter[str]) -> str:
    """``"3 files skipped (2 empty, binary or undecodable, 1 permission denied)"``."""
    total = sum(skipped.values())
    reasons = ", ".join(f"{count} {reason}" for reason, count in skipped.most_common() if count)
    return f"{total} files skipped ({reasons})" if total else "0 files skipped"


# --- chunking ---


def chunk_text(text: str, chunk_tokens: int, chunk_overlap: int) -> list[str]:
    """Split into chunks of at most ``chunk_tokens`` units, consecutive chunks sharing up to ``chunk_overlap``
    units; chunks end at a paragraph break where one fits, else at a line break, else mid-line."""
    return [text[start:end] for start, end in chunk_spans(text, chunk_tokens, chunk_overlap)]


def chunk_spans(text: str, chunk_tokens: int, chunk_overlap: int) -> list[tuple[int, int]]:
    """Where ``chunk_text``'s chunks start and end in ``text``."""
    units = list(UNIT.finditer(text))
    # A chunk may end after units[:b] for b in these lists without cutting a paragraph (or a line).
    newlines = [text.count("\n", units[i - 1].end(), units[i].start()) for i in range(1, len(units))]
    paragraphs = [i for i, count in enumerate(newlines, 1) if count >= 2] + [len(units)]
    lines = [i for i, count in enumerate(newlines, 1) if count >= 1] + [len(units)]
    chunks: list[tuple[int, int]] = []
    start = end = 0
    while end < len(units):
        limit = start + chunk_tokens
        following = paragraphs[bisect.bisect_right(paragraphs, end)]
        if best := _good_end(paragraphs, start, end, limit):
            new_end = best
        elif following > limit and following - end <= chunk_tokens:
            # The next paragraph fits whole if the overlap is shortened (to a line start where there is one).
            new_end, earliest = following, following - chunk_tokens
            line_start = lines[bisect.bisect_left(lines, earliest)]
            start = line_start if line_start <= end else earliest
        else:
            new_end = _good_end(lines, start, end, limit) or limit
        chunks.append((units[start].start(), units[new_end - 1].end()))
        end, start = new_end, _overlap_start(lines, new_end, chunk_overlap)
    return chunks


def _overlap_start(lines: list[int], end: int, chunk_overlap: int) -> int:
    """Where the chunk after ``end`` starts: ``chunk_overlap`` units back, or a little further back at the
    start of that line, so a chunk does not open mid-line (e.g. in the middle of a heading)."""
    start = max(end - chunk_overlap, 0)
    line_start = lines[bisect.bisect_right(lines, start) - 1] if lines and lines[0] <= start else 0
    return line_start if start - line_start <= chunk_overlap // 2 else start


def _good_end(bounds: list[int], start: int, end: int, limit: int) -> int | None:
    """The last bound in (end, limit], unless it would leave a tiny chunk (e.g. a lone heading) mid-text."""
    index = bisect.bisect_right(bounds, limit) - 1
    if index < 0 or bounds[index] <= end:
        return None
    best = bounds[index]
    return best if best - start >= (limit - start) // 2 or best == bounds[-1] else None


def ref_id_for(source: str) -> str:
    """The stable document id: a hash of the path relative to the corpus root."""
    return hashlib.sha1(source.encode("utf-8")).hexdigest()[:16]


def load_passages(
    corpus_dir: str | Path, *, chunk_tokens: int = DEFAULT_CHUNK_TOKENS, chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
) -> tuple[list[Passage], int]:
    """Read and chunk every corpus file under ``corpus_dir``.

    Returns the passages (files in path order, chunks in text order) and how many files were skipped
    (``passages_from`` says why). Raises ``CorpusError`` when the folder is missing or nothing is readable.
    """
    passages, skipped = passages_from(read_corpus(corpus_root(corpus_dir)), chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap)
    return passages, sum(skipped.values())


def passages_from(
    content: CorpusContent, *, chunk_tokens: int = DEFAULT_CHUNK_TOKENS, chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
) -> tuple[list[Passage], Counter[str]]:
    """The passages of files already read, and every skipped file's reason (reading, scanning and parsing)."""
    if not 0 <= chunk_overlap < chunk_tokens:
        raise CorpusError(f"need 0 <= chunk_overlap < chunk_tokens, got {chunk_overlap} and {chunk_tokens}")
    passages: list[Passage] = []
    skipped = Counter(content.skipped)
    for source, data in content.files:
        found = file_passages(source, data, chunk_tokens, chunk_overlap)
        if isinstance(found, str):
            skipped[found] += 1
        else:
            passages += found
    if not passages:
        raise CorpusError(
            f"corpus folder {content.root} has no readable files ({describe_skipped(skipped)}): add {FORMATS} to it, or use another folder"
        )
    return passages, skipped


def file_passages(source: str, data: bytes, chunk_tokens: int, chunk_overlap: int) -> list[Passage] | str:
    """One corpus file's passages, or why it is skipped."""
    ref_id = ref_id_for(source)
    if PurePosixPath(source).suffix.lower() in DOCUMENT_SUFFIXES:
        document = read_document_pages(data, source)
        if isinstance(document, str):
            return document
        try:
            chunks = list(chunk_pages(document.pages, chunk_tokens, chunk_overlap, join_short_pages=document.join_short_pages))
        except UnreadableDocument as error:
            return error.reason
        if not chunks:
            return NO_TEXT_LAYER if PurePosixPath(source).suffix.lower() in PDF_SUFFIXES else EMPTY
        return [Passage(ref_id, f"{ref_id}:{i}", document.title, source, c.text, c.page, c.page_end, c.sheet) for i, c in enumerate(chunks)]
    text = document_text(data, source)
    if isinstance(text, str):
        return text
    title, body = text
    return [Passage(ref_id, f"{ref_id}:{i}", title, source, chunk) for i, chunk in enumerate(chunk_text(body, chunk_tokens, chunk_overlap))] or EMPTY


class PageChunk(NamedTuple):
    text: str
    page: int | None
    page_end: int | None
    sheet: str | None


def chunk_pages(pages: Iterable[Page], chunk_tokens: int, chunk_overlap: int, *, join_short_pages: bool = True) -> Iterator[PageChunk]:
    """Chunks of a document's pages that prefer not to cross a page: each page is chunked on its own, but
    with ``join_short_pages`` a page shorter than a third of a chunk joins the pages after it (a chunk then
    spans pages). A sheet is never joined to another. Streams: one group of pages at a time."""
    group: list[Page] = []
    size = 0
    for page in pages:
        if not page.text.strip():
            continue
        if group and (page.sheet is not None or group[-1].sheet is not None):
            yield from _chunk_group(group, chunk_tokens, chunk_overlap)
            group, size = [], 0
        group.append(page)
        size += len(UNIT.findall(page.text))
        if size >= chunk_tokens // 3 or not join_short_pages:
            yield from _chunk_group(group, chunk_tokens, chunk_overlap)
            group, size = [], 0
    if group:
        yield from _chunk_group(group, chunk_tokens, chunk_overlap)


def _chunk_group(group: list[Page], chunk_tokens: int, chunk_overlap: int) -> Iterator[PageChunk]:
    text = "\n\n".join(page.text for page in group)
    starts = list(itertools.accumulate((len(page.text) + 2 for page in group[:-1]), initial=0))
    for start, end in chunk_spans(text, chunk_tokens, chunk_overlap):
        first, last = group[bisect.bisect_right(starts, start) - 1], group[bisect.bisect_right(starts, end - 1) - 1]
        page_end = last.number if last.number != first.number else None
        yield PageChunk(text[start:end], first.number, page_end, first.sheet)


# --- the bundled corpus ---


def demo_corpus_dir() -> Path:
    """The small machine-learning corpus bundled with the package."""
    return Path(str(resources.files("deepstep") / "demo_corpus"))
