"""PDF, Word, PowerPoint, Excel and EPUB files into passages with their pages: documents the tests write with
the formats' own libraries (fpdf2, python-docx, python-pptx, openpyxl; EPUB as the zip it is), the broken
cases, and the pure page cleaning and chunking by hand."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import docx
import openpyxl
import pptx
import pytest
from fpdf import FPDF
from typer.testing import CliRunner

import deepstep
from deepstep import dreamsboard_fields, step_tree
from deepstep.cli import app
from deepstep.configuration import Settings
from deepstep.corpus import chunk_pages, corpus_files, file_passages
from deepstep.documents import BROKEN, ENCRYPTED, NO_TEXT_LAYER, Page, clean_pages, clean_text
from deepstep.render import passage_location
from deepstep.store import export_store, read_store

# Each page's body differs, as real pages do; the running header and the page number recur.
BODIES = [
    "Gradient descent follows the negative gradient of the loss. The step size is the learning rate.",
    "Stochastic gradient descent estimates the gradient from a mini-batch. It is noisy but cheap.",
    "Momentum keeps a running average of past gradients. It damps oscillation across narrow valleys.",
    "Adam scales each coordinate by a running estimate of the gradient's second moment.",
    "Early stopping ends training when the validation loss stops improving for a few epochs.",
]


def guide_pdf(bodies: list[str] = BODIES, *, password: str | None = None, header: str = "Optimisation Notes - Chapter 3") -> bytes:
    pdf = FPDF()
    pdf.set_auto_page_break(False)
    pdf.set_font("helvetica", size=11)
    if password:
        pdf.set_encryption(owner_password=password, user_password=password)
    for number, body in enumerate(bodies, start=1):
        pdf.add_page()
        pdf.set_xy(10, 8)
        pdf.cell(0, 5, header)
        pdf.set_xy(10, 30)
        pdf.multi_cell(0, 5, body)
        pdf.set_xy(10, 280)
        pdf.cell(0, 5, str(number), align="C")
    return bytes(pdf.output())


def test_a_pdf_becomes_passages_with_their_physical_pages_and_without_page_furniture():
    passages = file_passages("notes.pdf", guide_pdf(), 20, 5)
    assert [p.page for p in passages] == [1, 2, 3, 4, 5]
    assert [p.page_end for p in passages] == [None] * 5
    for passage, body in zip(passages, BODIES, strict=True):
        assert " ".join(passage.text.split()) == body  # no header, no page number
    assert passages[0].title == "notes" and passages[0].source == "notes.pdf"


def test_a_short_pdf_page_joins_the_next_and_the_passage_records_both_pages():
    passages = file_passages("notes.pdf", guide_pdf(["Chapter 3", *BODIES[:2]]), 20, 5)
    assert [(p.page, p.page_end) for p in passages] == [(1, 2), (3, None)]
    assert passages[0].text.startswith("Chapter 3\n\nGradient descent")


def test_encrypted_truncated_and_scanned_pdfs_are_skipped_with_their_reason():
    assert file_passages("locked.pdf", guide_pdf(password="secret"), 20, 5) == ENCRYPTED
    whole = guide_pdf()
    assert file_passages("cut.pdf", whole[: len(whole) // 3], 20, 5) in (BROKEN, NO_TEXT_LAYER)
    assert file_passages("junk.pdf", b"%PDF-1.7\nnot really", 20, 5) == BROKEN
    blank = FPDF()
    blank.add_page()
    blank.rect(20, 20, 100, 100, style="F")  # a page of drawing (or a scan's image) and no text
    assert file_passages("scan.pdf", bytes(blank.output()), 20, 5) == NO_TEXT_LAYER


def test_word_documents_keep_headings_paragraphs_and_tables_in_order():
    document = docx.Document()
    document.core_properties.title = "Loss functions"
    document.add_heading("Squared error", level=1)
    document.add_paragraph("The squared error penalises large residuals.")
    table = document.add_table(rows=2, cols=2)
    for row, cells in zip(table.rows, [("loss", "use"), ("hinge", "SVMs")], strict=True):
        row.cells[0].text, row.cells[1].text = cells
    document.add_heading("Log loss", level=2)
    document.add_paragraph("Log loss scores predicted probabilities.")
    stream = io.BytesIO()
    document.save(stream)
    (passage,) = file_passages("losses.docx", stream.getvalue(), 180, 30)
    assert passage.title == "Loss functions" and passage.page is None  # Word documents flow: no pages
    assert passage.text == (
        "# Squared error\n\nThe squared error penalises large residuals.\n\nloss | use\n\nhinge | SVMs\n\n"
        "## Log loss\n\nLog loss scores predicted probabilities."
    )


def test_each_slide_is_its_own_page():
    deck = pptx.Presentation()
    for title, body in [("Hinge loss", "Used by support vector machines."), ("Log loss", "Used by logistic regression.")]:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
    stream = io.BytesIO()
    deck.save(stream)
    passages = file_passages("deck.pptx", stream.getvalue(), 180, 30)
    assert [(p.page, p.text) for p in passages] == [
        (1, "# Hinge loss\n\nUsed by support vector machines."),
        (2, "# Log loss\n\nUsed by logistic regression."),
    ]


def test_each_sheet_is_named_and_its_rows_are_lines():
    workbook = openpyxl.Workbook()
    prices = workbook.active
    prices.title = "Prices"
    prices.append(["model", "prompt", "completion"])
    prices.append(["small", 0.15, None])
    workbook.create_sheet("Notes").append(["Prices are per million tokens."])
    stream = io.BytesIO()
    workbook.save(stream)
    passages = file_passages("prices.xlsx", stream.getvalue(), 180, 30)
    assert [(p.sheet, p.text) for p in passages] == [
        ("Prices", "model | prompt | completion\nsmall | 0.15"),
        ("Notes", "Prices are per million tokens."),
    ]


def epub(chapters: list[tuple[str, str]], *, drm: bool = False) -> bytes:
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        archive.writestr("mimetype", "application/epub+zip")
        archive.writestr(
            "META-INF/container.xml",
            '<container xmlns="urn:oasis:names:tc:opendocument:xmlns:container" version="1.0"><rootfiles>'
            '<rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles></container>',
        )
        if drm:
            archive.writestr("META-INF/encryption.xml", "<encryption/>")
        items = "".join(f'<item id="c{i}" href="text/c{i}.xhtml" media-type="application/xhtml+xml"/>' for i in range(len(chapters)))
        # The spine reads the chapters in reverse order of their files: the spine decides.
        spine = "".join(f'<itemref idref="c{i}"/>' for i in reversed(range(len(chapters))))
        archive.writestr(
            "OEBPS/content.opf",
            '<package xmlns="http://www.idpf.org/2007/opf" version="3.0"><metadata xmlns:dc="http://purl.org/dc/elements/1.1/">'
            f"<dc:title>Training notes</dc:title></metadata><manifest>{items}</manifest><spine>{spine}</spine></package>",
        )
        for i, (heading, body) in enumerate(chapters):
            archive.writestr(f"OEBPS/text/c{i}.xhtml", f"<html><body><h1>{heading}</h1><p>{body}</p></body></html>")
    return stream.getvalue()


def test_an_epub_is_read_in_its_spine_order():
    passages = file_passages("notes.epub", epub([("Second", "Read after the first."), ("First", "Read first.")]), 180, 30)
    assert [p.title for p in passages] == ["Training notes"]
    assert passages[0].text == "# First\n\nRead first.\n\n# Second\n\nRead after the first."


def test_broken_office_files_and_drm_epubs_are_skipped_with_their_reason():
    assert file_passages("x.docx", b"PK\x03\x04 not a zip", 180, 30) == BROKEN
    assert file_passages("x.pptx", b"plain text", 180, 30) == BROKEN
    assert file_passages("x.xlsx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1 an encrypted package", 180, 30) == ENCRYPTED
    assert file_passages("x.epub", epub([("A", "b")], drm=True), 180, 30) == ENCRYPTED
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        archive.writestr("word/document.xml", "<not-closed>")
    assert file_passages("x.docx", stream.getvalue(), 180, 30) == BROKEN


# --- pure: cleaning and chunking by hand --------------------------------------------------------


def test_ligatures_are_spelled_out_and_line_end_hyphens_joined():
    assert clean_text("the ﬁrst eﬀect is signiﬁcant") == "the first effect is significant"
    assert clean_text("an exam-\nple of hyphen-\n  ation") == "an example of hyphenation"
    assert clean_text("well-\nKnown stays, as do 1-\n2 ranges") == "well-\nKnown stays, as do 1-\n2 ranges"  # capital or digit: kept
    # PDFium's mark of a line-end hyphen it joined (R-intro.pdf page 9: "pack\x02ages"), a soft hyphen, control characters.
    assert clean_text("about 25 pack\x02ages of S\x02Plus, co\u00adop\x14erate") == "about 25 packages of S-Plus, cooperate"


def test_running_headers_and_page_numbers_go_and_body_lines_stay():
    words = ["Alpha", "Beta", "Gamma", "Delta"]
    bodies = [f"{word} opens page {i + 1}.\nIt goes on about {word}.\nAnd ends on {word}." for i, word in enumerate(words)]
    pages = [Page(f"Chapter 3 Notes\n{body}\n{i + 1}", number=i + 1) for i, body in enumerate(bodies)]
    assert [page.text for page in clean_pages(pages)] == bodies
    # A heading on one page only is content.
    assert [page.text for page in clean_pages([Page("Introduction\nText.", number=1)])] == ["Introduction\nText."]


def test_cleaning_streams_a_few_pages_at_a_time():
    seen: list[int] = []

    def pages():
        for number in range(1, 41):
            seen.append(number)
            yield Page(f"Header\nText {'I' * number}.", number=number)

    cleaned = clean_pages(pages())
    first = next(cleaned)
    assert first.number == 1 and first.text == "Text I."
    assert len(seen) <= 9  # page 1 is out after the 8 pages that follow it were read, not after all 40
    assert [page.number for page in cleaned] == list(range(2, 41))


def test_chunks_prefer_not_to_cross_pages():
    pages = [Page("Title page", number=1), Page(" ".join(["alpha"] * 30), number=2), Page(" ".join(["beta"] * 12), number=3)]
    chunks = list(chunk_pages(pages, 24, 4))
    # Page 1 is short (under 24 // 3 units): it joins page 2; page 2 is long enough to be chunked on its own.
    assert [(c.page, c.page_end) for c in chunks] == [(1, 2), (2, None), (3, None)]
    assert chunks[0].text.startswith("Title page\n\nalpha")


# --- the CLI ------------------------------------------------------------------------------------


def test_corpus_index_counts_each_skip_reason_and_search_hits_carry_their_page(tmp_path: Path):
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "notes.pdf").write_bytes(guide_pdf())
    (corpus / "locked.pdf").write_bytes(guide_pdf(password="secret"))
    (corpus / "broken.docx").write_bytes(b"PK\x03\x04 not a zip")
    runner = CliRunner()
    env = {"DEEPSTEP_HOME": str(tmp_path / "home"), "DEEPSTEP_CHUNK_TOKENS": "20", "DEEPSTEP_CHUNK_OVERLAP": "5"}
    indexed = runner.invoke(app, ["corpus", "index", str(corpus)], env=env)
    assert indexed.exit_code == 0, indexed.output
    assert "5 passages from 1 documents" in indexed.output
    assert f"2 files skipped (1 {ENCRYPTED}, 1 {BROKEN})" in " ".join(indexed.output.split()) or (
        f"2 files skipped (1 {BROKEN}, 1 {ENCRYPTED})" in " ".join(indexed.output.split())
    )
    searched = runner.invoke(app, ["corpus", "search", "momentum running average", "--corpus", str(corpus), "--json"], env=env)
    assert searched.exit_code == 0, searched.output
    hits = json.loads(searched.output)
    assert hits[0]["source"] == "notes.pdf" and hits[0]["page"] == 3


@pytest.mark.parametrize("name", ["deck.pptx", "prices.xlsx", "losses.docx", "notes.epub", "notes.pdf"])
def test_every_document_format_is_scanned_into_a_corpus(tmp_path: Path, name: str):
    (tmp_path / name).write_bytes(b"")
    assert [source for source, _ in corpus_files(tmp_path)] == [name]


# --- pages in citations -----------------------------------------------------------------------------


def test_a_reference_says_where_in_the_document_its_passage_is():
    assert passage_location({"source": "R-intro.pdf", "page": 23}) == ", p. 23"
    assert passage_location({"source": "R-intro.pdf", "page": 23, "page_end": 24}) == ", pp. 23-24"
    assert passage_location({"source": "prices.xlsx", "sheet": "Prices"}) == ", sheet Prices"
    assert passage_location({"source": "guide.md"}) == ""


def test_a_run_over_a_pdf_cites_pages_in_its_references_table_and_store(settings, fake_llm, tmp_path: Path):
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "notes.pdf").write_bytes(guide_pdf())
    run_settings = Settings.build(**{**settings.model_dump(), "rollouts": 0, "max_steps": 1, "chunk_tokens": 20, "chunk_overlap": 5})
    result = deepstep.run("What is gradient descent?", corpus=corpus, settings=run_settings)
    references = result.markdown.split("# References", 1)[1]
    assert "(notes.pdf, p. 1), ref_id:" in references
    (contexts,) = result.table()[dreamsboard_fields.STEP_FIELDS["contexts"]]
    assert all(isinstance(context["page"], int) for context in contexts)
    export_store(result.tree, tmp_path / "store")  # dreamsboard ignores the extra field; deepstep reads it back
    (step,) = step_tree.steps(read_store(tmp_path / "store"))
    assert [context["page"] for context in step["contexts"]] == [context["page"] for context in contexts]
