"""The report as HTML, Word and PDF: the same content as the Markdown (headings, steps, citations,
references, Chinese, math), HTML inside answers inert. Over a real run on the fake server, a
hand-built report with the hard cases, and ``deepstep export``; the math to Unicode by hand."""

from __future__ import annotations

import ctypes
import io
import re
import sys
from pathlib import Path

import docx
import pypdfium2
import pypdfium2.raw as pdfium_c
import pytest
from typer.testing import CliRunner

import deepstep
from deepstep.cli import app
from deepstep.errors import MissingDependencyError
from deepstep.report_formats import markdown_to_docx, markdown_to_html, markdown_to_pdf, unicode_math

QUESTION = "什么是损失函数 (loss function)?"
SCRIPT = "<script>alert('owned')</script>"
# As a model and the report layout write them: Chinese, inline and display math in both notations,
# a raw <script> (not escaped by the report, to test the converters alone), a table, a link, an image.
HAND_REPORT = f"""# {QUESTION}

_2 steps: 2 answered._

**Low confidence:** 定义与作用 [task_id:0](aaaa-1111)

## Answer

损失函数衡量预测值与真实值之间的差距 [1]. The mean squared error is $\\frac{{1}}{{n}} \\sum_i (y_i - \\hat{{y}}_i)^2$ for $n$ samples [2].

## 定义与作用 [task_id:0](aaaa-1111)

A model answer with markup in it: {SCRIPT} and <img src=x onerror=alert(1)>.

\\[ \\theta \\leftarrow \\theta - \\alpha \\nabla L \\]

| 损失函数 | Formula |
| --- | --- |
| MSE | $x^2$ |
| MAE | \\(e_i\\) |

See [the notes](https://example.org/notes) and ![a plot](https://example.org/track.png).

### Squared error [task_id:0>1](bbbb-2222)

1. Square each error.
2. Average them.

# References

- [1] 损失函数 (损失函数.md), ref_id:r1, chunk_id:r1:0
- [2] Gradient Descent (notes.pdf, p. 23), ref_id:r2, chunk_id:r2:0
"""


def squeezed(text: str) -> str:
    """Text without whitespace: a PDF wraps lines wherever the page ends (CJK lines without a space)."""
    return re.sub(r"\s+", "", text)


def pdf_text(path_or_bytes: Path | bytes) -> str:
    document = pypdfium2.PdfDocument(path_or_bytes)
    return "\n".join(document[number].get_textpage().get_text_bounded() for number in range(len(document)))


def fonts_of(path_or_bytes: Path | bytes, characters: str) -> set[str]:
    """The names of the fonts page 1 draws ``characters`` with (pdfium's per-character font info)."""
    page = pypdfium2.PdfDocument(path_or_bytes)[0]
    text_page = page.get_textpage()
    fonts = set()
    for index in range(pdfium_c.FPDFText_CountChars(text_page)):
        if chr(pdfium_c.FPDFText_GetUnicode(text_page, index)) in characters:
            name = ctypes.create_string_buffer(256)
            pdfium_c.FPDFText_GetFontInfo(text_page, index, name, 256, None)
            fonts.add(name.value.decode())
    return fonts


def dark_share_of_page_one(pdf: Path, png: Path) -> float:
    """Render page 1 to ``png`` and return the share of its pixels that are dark (text, not paper)."""
    pypdfium2.PdfDocument(pdf)[0].render(scale=1).to_pil().save(png)
    from PIL import Image

    grey = Image.open(png).convert("L")
    histogram = grey.histogram()
    return sum(histogram[:128]) / (grey.width * grey.height)


def docx_lines(data: bytes | Path) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """(style, text) of every paragraph, and each table's cells by row."""
    document = docx.Document(io.BytesIO(data) if isinstance(data, bytes) else str(data))
    paragraphs = [(p.style.name if p.style is not None else "", p.text) for p in document.paragraphs]
    tables = [[cell.text for row in table.rows for cell in row.cells] for table in document.tables]
    return paragraphs, tables


# --- math, by hand ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tex", "readable"),
    [
        ("\\theta", "θ"),
        ("y_i", "yᵢ"),
        ("x^2", "x²"),
        ("x^{10}", "x¹⁰"),
        ("\\hat{y}_i", "ŷᵢ"),
        ("(y_i - \\hat{y}_i)^2", "(yᵢ - ŷᵢ)²"),
        ("\\sum_{i=1}^{n} x_i", "∑ᵢ₌₁ⁿ xᵢ"),
        ("\\alpha \\leq 1", "α ≤ 1"),
        ("\\text{MSE} = 0", "MSE = 0"),
        ("\\log x", "log x"),
        ("\\omega \\pi \\rho \\sigma", "ω π ρ σ"),
        # Beyond Unicode's reach: kept as TeX by the caller.
        ("\\frac{a}{b}", None),
        ("\\mathbf{x}", None),
        ("x_{ab}", None),  # no subscript b in Unicode
        ("\\sqrt{2}", None),
        ("\\hat{xy}", None),
        ("", None),
    ],
)
def test_simple_formulas_become_unicode_others_stay_tex(tex, readable):
    assert unicode_math(tex) == readable


# --- the hand-built report -----------------------------------------------------------------------------


def test_html_has_the_report_with_markup_escaped_and_math_readable():
    page = markdown_to_html(HAND_REPORT, title=QUESTION)
    assert page.startswith("<!DOCTYPE html>") and f"<title>{QUESTION}</title>" in page
    assert f"<h1>{QUESTION}</h1>" in page and "<h2>Answer</h2>" in page
    # A step is the anchor its id names, and links to it jump there.
    assert '<h2 id="aaaa-1111">定义与作用 <a href="#aaaa-1111">task_id:0</a></h2>' in page
    assert '<h3 id="bbbb-2222">Squared error <a href="#bbbb-2222">task_id:0&gt;1</a></h3>' in page
    assert '<strong>Low confidence:</strong> 定义与作用 <a href="#aaaa-1111">task_id:0</a>' in page
    # Inert: the model's markup is text, and nothing is fetched when the page opens.
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;" in page or "&lt;script&gt;alert('owned')&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "[image: a plot] (https://example.org/track.png)" in page
    assert "default-src 'none'" in page
    # Math: TeX where Unicode cannot say it, Unicode where it can.
    assert '<code class="tex">\\frac{1}{n} \\sum_i (y_i - \\hat{y}_i)^2</code>' in page
    assert '<span class="math">n</span>' in page and '<span class="math">x²</span>' in page and '<span class="math">eᵢ</span>' in page
    assert '<span class="math-display"><span class="math">θ ← θ - α ∇ L</span></span>' in page
    assert "<table>" in page and "<th>损失函数</th>" in page
    assert '<a href="https://example.org/notes">the notes</a>' in page
    assert "<li>[2] Gradient Descent (notes.pdf, p. 23), ref_id:r2, chunk_id:r2:0</li>" in page


def test_docx_has_headings_steps_table_and_references():
    paragraphs, tables = docx_lines(markdown_to_docx(HAND_REPORT, title=QUESTION))
    headings = [(style, text) for style, text in paragraphs if style.startswith("Heading")]
    assert headings == [
        ("Heading 1", QUESTION),
        ("Heading 2", "Answer"),
        ("Heading 2", "定义与作用 task_id:0 (aaaa-1111)"),
        ("Heading 3", "Squared error task_id:0>1 (bbbb-2222)"),
        ("Heading 1", "References"),
    ]
    texts = [text for _, text in paragraphs]
    assert f"A model answer with markup in it: {SCRIPT} and <img src=x onerror=alert(1)>." in texts
    assert "θ ← θ - α ∇ L" in "".join(texts)
    assert any("\\frac{1}{n} \\sum_i (y_i - \\hat{y}_i)^2" in text for text in texts)
    assert "See the notes (https://example.org/notes) and [image: a plot] (https://example.org/track.png)." in texts
    assert ("List", "1. Square each error.") in paragraphs
    assert ("List Bullet", "[2] Gradient Descent (notes.pdf, p. 23), ref_id:r2, chunk_id:r2:0") in paragraphs
    assert tables == [["损失函数", "Formula", "MSE", "x²", "MAE", "eᵢ"]]


def test_pdf_has_the_text_with_a_chinese_font(tmp_path):
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(markdown_to_pdf(HAND_REPORT, title=QUESTION))
    text = squeezed(pdf_text(pdf))
    for needed in (QUESTION, "定义与作用task_id:0", "Squarederror", SCRIPT, "[2]GradientDescent(notes.pdf,p.23),ref_id:r2,chunk_id:r2:0"):
        assert squeezed(needed) in text
    assert squeezed("\\frac{1}{n}\\sum_i(y_i-\\hat{y}_i)^2") in text and "θ←θ-α∇L" in text
    # The Chinese characters are drawn with a CJK font, not DejaVu's missing-glyph boxes.
    chinese_fonts = fonts_of(pdf, "损失函数")
    assert chinese_fonts and all(re.search(r"WenQuanYi|CJK|Han|YaHei|PingFang", name) for name in chinese_fonts), chinese_fonts
    assert dark_share_of_page_one(pdf, tmp_path / "page1.png") > 0.005


# --- a real run ----------------------------------------------------------------------------------------


def test_a_runs_report_in_every_format(settings, tmp_path):
    result = deepstep.run(QUESTION, settings=settings.model_copy(update={"report_layout": "answer_first"}))
    assert result.status == "done"
    steps = [line[3:].split(" [task_id:")[0] for line in result.markdown.splitlines() if line.startswith(("## Aspect", "### Aspect"))]
    references = [line[2:] for line in result.markdown.splitlines() if line.startswith("- [")]
    assert steps and references, result.markdown

    page = result.to_html()
    assert result.write_html(tmp_path / "r.html").read_text(encoding="utf-8") == page
    assert f"<h1>{QUESTION}</h1>" in page and f"{steps[0]} <a href=" in page and f"<li>{references[0]}</li>" in page

    paragraphs, _ = docx_lines(result.write_docx(tmp_path / "r.docx"))
    assert ("Heading 1", QUESTION) in paragraphs and ("Heading 1", "References") in paragraphs
    assert any(style == "Heading 2" and text.startswith(steps[0]) for style, text in paragraphs)
    assert [text for style, text in paragraphs if style == "List Bullet"][-len(references) :] == references

    pdf = result.write_pdf(tmp_path / "r.pdf")
    text = squeezed(pdf_text(pdf))
    assert squeezed(QUESTION) in text and squeezed(steps[0]) in text and squeezed(references[-1]) in text
    assert dark_share_of_page_one(pdf, tmp_path / "page1.png") > 0.005


# --- the command ---------------------------------------------------------------------------------------


@pytest.fixture
def stored_thread(fake_llm, monkeypatch):
    from conftest import TEST_CORPUS

    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    monkeypatch.setenv("DEEPSTEP_CORPUS", str(TEST_CORPUS))
    monkeypatch.setenv("DEEPSTEP_ROLLOUTS", "1")
    monkeypatch.setenv("DEEPSTEP_MAX_RETRIES", "0")
    result = CliRunner().invoke(app, ["run", QUESTION, "--thread-id", "exp1"])
    assert result.exit_code == 0, result.output
    return "exp1"


def test_export_writes_pdf_docx_and_html(stored_thread, tmp_path):
    files = {kind: tmp_path / "out" / f"f.{kind}" for kind in ("pdf", "docx", "html")}
    result = CliRunner().invoke(
        app, ["export", stored_thread, "--pdf", str(files["pdf"]), "--docx", str(files["docx"]), "--html", str(files["html"])]
    )
    assert result.exit_code == 0, result.output
    assert all(f"wrote {path}" in result.output for path in files.values())
    assert squeezed(QUESTION) in squeezed(pdf_text(files["pdf"]))
    assert ("Heading 1", QUESTION) in docx_lines(files["docx"])[0]
    assert f"<h1>{QUESTION}</h1>" in files["html"].read_text(encoding="utf-8")
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["f.docx", "f.html", "f.pdf"]  # no temporary file left


def test_pdf_without_weasyprint_is_one_line_and_keeps_the_old_file(stored_thread, tmp_path, monkeypatch):
    old = tmp_path / "f.pdf"
    old.write_bytes(b"the previous export")
    monkeypatch.setitem(sys.modules, "weasyprint", None)  # what `import weasyprint` meets when it is not installed
    result = CliRunner().invoke(app, ["export", stored_thread, "--pdf", str(old)])
    assert result.exit_code == 2
    assert result.output.strip() == "error: writing PDF needs WeasyPrint: pip install 'deepstep[pdf]' (or export --html and print it to PDF)"
    assert old.read_bytes() == b"the previous export"
    with pytest.raises(MissingDependencyError, match=r"deepstep\[pdf\]"):
        deepstep.load(stored_thread).write_pdf(tmp_path / "g.pdf")


def test_money_is_not_math():
    page = markdown_to_html("It costs $5 or $10, and $x$ is a variable.")
    assert "It costs $5 or $10, and " in page and '<span class="math">x</span>' in page


class _PangoMissing:
    """An import finder that fails ``import weasyprint`` the way it fails when Debian's Pango is missing."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "weasyprint":
            raise OSError("cannot load library 'libpango-1.0-0': libpango-1.0-0: cannot open shared object file")


def test_pdf_without_pango_names_the_debian_packages(monkeypatch):
    monkeypatch.delitem(sys.modules, "weasyprint", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_PangoMissing(), *sys.meta_path])
    with pytest.raises(MissingDependencyError, match=r"needs the Pango library .*apt-get install libpango-1.0-0 libpangoft2-1.0-0$"):
        markdown_to_pdf("# title")


def test_pdf_fetches_nothing_a_page_names(tmp_path):
    """A page with a remote image and stylesheet (not one deepstep writes, but html_to_pdf takes any) makes no request."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from deepstep.report_formats import html_to_pdf

    requests: list[str] = []

    class Recorder(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            requests.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"http://127.0.0.1:{server.server_port}"
        page = f'<html><head><link rel="stylesheet" href="{address}/style.css"></head><body><p>text</p><img src="{address}/pixel.png"></body></html>'
        assert html_to_pdf(page).startswith(b"%PDF")
    finally:
        server.shutdown()
        server.server_close()
    assert requests == []
