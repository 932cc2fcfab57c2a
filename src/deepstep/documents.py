"""The documents people have, as text page by page: PDF, Word, PowerPoint, Excel and EPUB.

Each reader yields ``Page`` records one at a time, so a 1,000-page PDF is never held as text whole:
the chunker turns a few pages into passages and lets them go. Paged formats number their pages from 1
(a PDF's physical pages, a deck's slides); a workbook's sheets are named; Word and EPUB documents flow
and have no pages. A file that cannot be read is skipped with one of the reasons below.

Libraries, chosen for text quality, speed and licence: PDFium through ``pypdfium2`` (Apache-2.0 or
BSD-3-Clause; see benchmarks/pdf_libraries.py for the comparison), ``python-docx``, ``python-pptx``
and ``openpyxl`` (MIT). EPUB is a zip of XHTML pages read in its spine's order with the corpus' own
HTML reader (EbookLib is AGPL).
"""

from __future__ import annotations

import io
import re
import threading
import unicodedata
import zipfile
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import NamedTuple
from xml.etree import ElementTree

PDF_SUFFIXES = frozenset({".pdf"})
OFFICE_SUFFIXES = frozenset({".docx", ".pptx", ".xlsx"})
EPUB_SUFFIXES = frozenset({".epub"})
DOCUMENT_SUFFIXES = PDF_SUFFIXES | OFFICE_SUFFIXES | EPUB_SUFFIXES

# Why a document was skipped, as `deepstep corpus index` reports it.
ENCRYPTED = "encrypted (password-protected) documents"
NO_TEXT_LAYER = "scanned PDFs without a text layer (OCR them first)"
BROKEN = "truncated or corrupt documents"

# An Office file saved with a password is an OLE compound file, not a zip.
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


class Page(NamedTuple):
    """Text of one page: ``number`` is the 1-based physical page or slide, ``sheet`` a workbook sheet's name."""

    text: str
    number: int | None = None
    sheet: str | None = None


class Document(NamedTuple):
    title: str
    pages: Iterator[Page]
    # A short PDF page (a chapter's title page) joins the next in one passage; a slide stays on its own,
    # so a citation names its slide.
    join_short_pages: bool = True


class UnreadableDocument(Exception):
    """A document found broken while its pages are read; ``reason`` is one of the skip reasons."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_document_pages(data: bytes, name: str) -> Document | str:
    """The title and pages of a PDF, DOCX, PPTX, XLSX or EPUB file's bytes, or why it is skipped. Pages are
    read lazily: iterating them may still raise ``UnreadableDocument`` for a file broken past its start."""
    suffix = PurePosixPath(name).suffix.lower()
    stem = PurePosixPath(name).stem
    if suffix in PDF_SUFFIXES:
        return _pdf(data, stem)
    if data.startswith(_OLE_MAGIC):
        return ENCRYPTED
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        return BROKEN
    if suffix == ".epub":
        return _epub(archive, stem)
    return _office(data, suffix, stem)


# --- PDF ---


# PDFium is not thread-safe, and the steps of a run may index a corpus from several threads at once.
_PDFIUM = threading.Lock()


def _pdf(data: bytes, stem: str) -> Document | str:
    import pypdfium2 as pdfium  # loads PDFium only when a corpus holds a PDF

    try:
        with _PDFIUM:
            pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as error:
        return ENCRYPTED if getattr(error, "err_code", None) in (pdfium.raw.FPDF_ERR_PASSWORD, pdfium.raw.FPDF_ERR_SECURITY) else BROKEN
    return Document(stem, clean_pages(_pdf_pages(pdf)))


def _pdf_pages(pdf: object) -> Iterator[Page]:
    import pypdfium2 as pdfium

    assert isinstance(pdf, pdfium.PdfDocument)
    try:
        for index in range(len(pdf)):
            with _PDFIUM:
                try:
                    page = pdf[index]
                    textpage = page.get_textpage()
                    text = textpage.get_text_bounded()
                    textpage.close()
                    page.close()
                except pdfium.PdfiumError as error:  # a corrupt file may fail on any page: the whole file is skipped
                    raise UnreadableDocument(BROKEN) from error
            yield Page(text.replace("\r\n", "\n").replace("\r", "\n"), number=index + 1)
    finally:
        with _PDFIUM:
            pdf.close()


# --- layout noise ---

_LIGATURES = {chr(code): unicodedata.normalize("NFKC", chr(code)) for code in range(0xFB00, 0xFB07)}
_LIGATURE = re.compile(f"[{''.join(_LIGATURES)}]")
# "exam-\nple" -> "example": a hyphen at a line end between letters, the next line starting lowercase.
_LINE_END_HYPHEN = re.compile(r"(?<=[^\W\d_])-\n[ \t]*(?=[a-z])")
_PAGE_NUMBER = re.compile(r"^\W*(?:page\s+)?(?:\d{1,5}|[ivxlcdm]{1,8})(?:\s*(?:/|of)\s*\d{1,5})?\W*$", re.IGNORECASE)
_DIGITS = re.compile(r"\d+")
# Running headers and footers are the lines at a page's edges that recur on nearby pages (digits aside).
EDGE_LINES = 2
FURNITURE_WINDOW = 8  # pages looked at on each side: a few pages' text at a time
FURNITURE_REPEATS = 2  # other pages in the window with the same edge line


# PDFium marks a hyphen it found at a line end (and joined the line at) as U+0002 or U+FFFE; a soft hyphen is U+00AD.
_MARKED_HYPHEN = re.compile("[\x02\ufffe\u00ad](?=[a-z])")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(text: str) -> str:
    """Ligatures spelled out, words hyphenated at line ends joined, control characters dropped."""
    text = _LINE_END_HYPHEN.sub("", _LIGATURE.sub(lambda match: _LIGATURES[match.group()], text))
    text = _MARKED_HYPHEN.sub("", text).replace("\x02", "-").replace("\ufffe", "-")  # "pack\x02ages" -> "packages"; "S\x02Plus" -> "S-Plus"
    return _CONTROL.sub("", text.replace("\u00ad", ""))


FURNITURE_CHARS = 120  # a longer line is body text, even at a page's edge


def _edge_keys(lines: list[str]) -> set[str]:
    edges = [line for line in lines if line.strip()]
    return {_furniture_key(line) for line in edges[:EDGE_LINES] + edges[-EDGE_LINES:] if len(line.strip()) <= FURNITURE_CHARS}


def _furniture_key(line: str) -> str:
    return _DIGITS.sub("#", line.strip().lower())


def _without_furniture(page: Page, lines: list[str], repeated: Counter[str]) -> Page:
    """``page`` without its page number and the edge lines that recur on nearby pages."""
    nonblank = [i for i, line in enumerate(lines) if line.strip()]
    edges = set(nonblank[:EDGE_LINES] + nonblank[-EDGE_LINES:])
    kept = [
        line
        for i, line in enumerate(lines)
        if i not in edges or not (_PAGE_NUMBER.match(line.strip()) or repeated[_furniture_key(line)] >= FURNITURE_REPEATS)
    ]
    return page._replace(text=clean_text("\n".join(kept)).strip())


def clean_pages(pages: Iterable[Page]) -> Iterator[Page]:
    """Pages with running headers, footers and page numbers dropped, ligatures spelled out and line-end
    hyphenation joined. Streams: it holds at most ``2 * FURNITURE_WINDOW + 1`` pages at a time."""
    window: deque[tuple[Page, list[str], set[str]]] = deque()  # the pages around the next one to give out
    next_out = 0  # its index in ``window``

    def cleaned(index: int) -> Page:
        counts: Counter[str] = Counter()
        for other, (_, _, keys) in enumerate(window):
            if other != index:
                counts.update(keys)
        page, lines, _ = window[index]
        return _without_furniture(page, lines, counts)

    for page in pages:
        lines = page.text.split("\n")
        window.append((page, lines, _edge_keys(lines)))
        if len(window) - 1 - next_out >= FURNITURE_WINDOW:  # the next page has its following pages in view
            yield cleaned(next_out)
            next_out += 1
            if next_out > FURNITURE_WINDOW:
                window.popleft()
                next_out -= 1
    for index in range(next_out, len(window)):
        yield cleaned(index)


# --- Office ---


def _office(data: bytes, suffix: str, stem: str) -> Document | str:
    try:
        if suffix == ".docx":
            return _docx(data, stem)
        if suffix == ".pptx":
            return _pptx(data, stem)
        return _xlsx(data, stem)
    except (KeyError, ValueError, zipfile.BadZipFile, ElementTree.ParseError, OSError):
        return BROKEN
    except Exception as error:  # lxml's XMLSyntaxError and the libraries' own errors for a damaged package
        if type(error).__module__.split(".")[0] in ("lxml", "docx", "pptx", "openpyxl"):
            return BROKEN
        raise


def _docx(data: bytes, stem: str) -> Document:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    document = docx.Document(io.BytesIO(data))
    blocks: list[str] = []
    for block in document.iter_inner_content():
        if isinstance(block, Paragraph):
            text = block.text.strip()
            style = (block.style.name if block.style is not None else "") or ""
            heading = re.match(r"Heading (\d)", style)
            level = int(heading.group(1)) if heading else 1 if style == "Title" else 0
            blocks.append(f"{'#' * level} {text}" if level and text else text)
        elif isinstance(block, Table):
            blocks.extend(" | ".join(cell.text.strip() for cell in row.cells) for row in block.rows)
    text = "\n\n".join(block for block in blocks if block)
    title = document.core_properties.title or _first_heading(text) or stem
    return Document(title, iter([Page(text)]) if text.strip() else iter([]))


def _first_heading(text: str) -> str | None:
    match = re.search(r"^#+ (.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def _pptx(data: bytes, stem: str) -> Document:
    import pptx

    deck = pptx.Presentation(io.BytesIO(data))
    title = deck.core_properties.title or stem

    def slides() -> Iterator[Page]:
        for number, slide in enumerate(deck.slides, start=1):
            parts: list[str] = []
            for shape in slide.shapes:
                if shape.has_text_frame:
                    text = shape.text_frame.text.strip()
                    heading = shape == slide.shapes.title
                    parts.append(f"# {text}" if heading and text else text)
                elif getattr(shape, "has_table", False) and shape.has_table:
                    parts.extend(" | ".join(cell.text.strip() for cell in row.cells) for row in shape.table.rows)
            if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
                parts.append(slide.notes_slide.notes_text_frame.text.strip())
            yield Page("\n\n".join(part for part in parts if part), number=number)

    return Document(title, slides(), join_short_pages=False)


def _xlsx(data: bytes, stem: str) -> Document:
    import openpyxl

    workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    title = workbook.properties.title or stem

    def sheets() -> Iterator[Page]:
        try:
            for sheet in workbook.worksheets:
                rows = (" | ".join("" if value is None else str(value) for value in row).rstrip(" |") for row in sheet.iter_rows(values_only=True))
                yield Page("\n".join(row for row in rows if row.strip(" |")), sheet=sheet.title)
        finally:
            workbook.close()

    return Document(title, sheets())


# --- EPUB ---

_CONTAINER = "META-INF/container.xml"
_NS = {"c": "urn:oasis:names:tc:opendocument:xmlns:container", "opf": "http://www.idpf.org/2007/opf", "dc": "http://purl.org/dc/elements/1.1/"}


def _epub(archive: zipfile.ZipFile, stem: str) -> Document | str:
    try:
        if "META-INF/encryption.xml" in archive.namelist():
            return ENCRYPTED  # DRM: the content files are encrypted
        rootfile = ElementTree.fromstring(archive.read(_CONTAINER)).find(".//c:rootfile", _NS)
        if rootfile is None:
            return BROKEN
        opf_path = PurePosixPath(rootfile.attrib["full-path"])
        package = ElementTree.fromstring(archive.read(str(opf_path)))
        manifest = {item.attrib["id"]: item.attrib["href"] for item in package.iterfind(".//opf:manifest/opf:item", _NS)}
        spine = [manifest[ref.attrib["idref"]] for ref in package.iterfind(".//opf:spine/opf:itemref", _NS) if ref.attrib.get("idref") in manifest]
        title_element = package.find(".//dc:title", _NS)
    except (KeyError, ElementTree.ParseError, zipfile.BadZipFile, OSError):
        return BROKEN
    title = (title_element.text or "").strip() if title_element is not None else ""

    def chapters() -> Iterator[Page]:
        from deepstep.corpus import html_to_text

        for href in spine:
            member = str((opf_path.parent / href).as_posix()).lstrip("./") if str(opf_path.parent) != "." else href
            try:
                html = archive.read(member)
            except (KeyError, zipfile.BadZipFile, OSError) as error:
                raise UnreadableDocument(BROKEN) from error
            yield Page(html_to_text(html)[0])

    return Document(title or stem, chapters())
