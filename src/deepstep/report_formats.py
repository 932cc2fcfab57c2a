"""The Markdown report as HTML, Word (DOCX) and PDF: pure conversions, from text to text or bytes.

One parse serves all three: markdown-it-py reads the report (CommonMark, with tables) into tokens;
HTML is its renderer's output inside a page with a small print stylesheet, DOCX is written by
walking the same tokens with python-docx, and PDF is that HTML laid out by WeasyPrint. Writing the
files (atomically) is the caller's job: ``RunResult.write_html``/``write_docx``/``write_pdf`` and
``deepstep export``.

Why these libraries: markdown-it-py (MIT, the executablebooks project, also behind rich and MyST)
is a maintained CommonMark parser whose token stream is easy to walk, and with its ``html`` option
off raw HTML in the text is escaped, never passed through; mdit-py-plugins (MIT, same project)
reads ``$...$``/``$$...$$`` math. python-docx (MIT) is already how deepstep reads Word files.
WeasyPrint (BSD) turns HTML and CSS into PDF in Python, with Pango doing the text layout, so
Chinese and other scripts come out shaped and with font fallback; it needs Debian's pango
(``scripts/setup.sh`` checks it, and installs a CJK font). pandoc would cover all three but is a
large non-Python program, and its PDF path needs a LaTeX installation.

What the formats keep, as the Markdown report has it:

- **Inert HTML.** Raw HTML in an answer (``<script>``, ``<img onerror=...>``) is text in every
  format. The HTML page also carries a Content-Security-Policy that allows no script and no remote
  resource, and a Markdown image becomes its alt text and address, so opening the page fetches
  nothing. WeasyPrint's URL fetcher is limited to ``data:`` URLs: a PDF export makes no request.
- **LaTeX math** (``$...$``, ``$$...$$``, ``\\(...\\)``, ``\\[...\\]``): a formula made only of
  letters, digits, operators, named symbols (Greek letters, ``\\sum``, ``\\leq``...), one-letter accents
  (``\\hat{y}``), ``\\text{...}`` words and sub- and superscripts Unicode has characters for is shown in
  Unicode (``$\\hat{y}_i^2$`` -> ŷᵢ²); any other (``\\frac``, ``\\sqrt``, ``\\mathbf``...) is kept as its
  TeX source in a code-like span, which reads unambiguously and copies back into LaTeX. No
  typesetting engine is involved. (So an escaped ``\\[1\\]`` in prose reads as display math "1".)
- **Links** stay links in HTML and PDF, and a step's own link makes its heading an anchor; in DOCX
  links are their text followed by the address.
"""

from __future__ import annotations

import html
import io
import re
import unicodedata
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline
from mdit_py_plugins.dollarmath import dollarmath_plugin

from deepstep.errors import MissingDependencyError

if TYPE_CHECKING:
    from docx.document import Document as DocxDocument
    from docx.text.paragraph import Paragraph
    from markdown_it.renderer import RendererHTML
    from markdown_it.token import Token
    from markdown_it.utils import EnvType, OptionsDict

PDF_INSTALL_HINT = "pip install 'deepstep[pdf]'"

# --- math shown readably -------------------------------------------------------------------------------

_GREEK = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi pi rho sigma tau upsilon phi chi psi omega".split()
_SYMBOLS: dict[str, str] = {
    **dict(zip(_GREEK, "αβγδεζηθικλμνξπρστυφχψω", strict=True)),
    "varepsilon": "ε",
    "vartheta": "ϑ",
    "varphi": "φ",
    **{"Gamma": "Γ", "Delta": "Δ", "Theta": "Θ", "Lambda": "Λ", "Xi": "Ξ", "Pi": "Π", "Sigma": "Σ", "Phi": "Φ", "Psi": "Ψ", "Omega": "Ω"},
    **{"cdot": "·", "times": "×", "div": "÷", "pm": "±", "mp": "∓", "leq": "≤", "le": "≤", "geq": "≥", "ge": "≥", "neq": "≠", "ne": "≠"},
    **{"approx": "≈", "equiv": "≡", "sim": "∼", "propto": "∝", "infty": "∞", "sum": "∑", "prod": "∏", "int": "∫", "partial": "∂"},
    **{"nabla": "∇", "to": "→", "rightarrow": "→", "leftarrow": "←", "Rightarrow": "⇒", "Leftrightarrow": "⇔", "mapsto": "↦"},
    **{"in": "∈", "notin": "∉", "subset": "⊂", "subseteq": "⊆", "cup": "∪", "cap": "∩", "forall": "∀", "exists": "∃"},
    **{"ldots": "…", "cdots": "⋯", "dots": "…", "log": "log", "ln": "ln", "exp": "exp", "sin": "sin", "cos": "cos", "max": "max", "min": "min"},
    **{",": " ", ";": " ", ":": " ", " ": " ", "quad": " ", "{": "{", "}": "}", "%": "%", "_": "_", "$": "$", "#": "#"},
}
_SUPERSCRIPTS = dict(zip("0123456789+-=()niT", "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿⁱᵀ", strict=True))
_SUBSCRIPTS = dict(zip("0123456789+-=()aeoxhklmnpstijruv", "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎ₐₑₒₓₕₖₗₘₙₚₛₜᵢⱼᵣᵤᵥ", strict=True))
_TEX_PIECE = re.compile(r"\\([A-Za-z]+|.)|([_^])(?:\{([^{}]*)\}|(\\[A-Za-z]+|.))|(.)", re.DOTALL)
_PLAIN = re.compile(r"[A-Za-z0-9 +\-=()\[\]|/<>.,!'*\u0302\u0303\u0304\u0307\u20d7]")


def _script(text: str, table: dict[str, str]) -> str | None:
    """``text`` as Unicode sub- or superscript characters, or None when one has no such character."""
    text = text.strip()
    if text.startswith("\\"):
        symbol = _SYMBOLS.get(text[1:])
        return table.get(symbol) if symbol and len(symbol) == 1 else None
    shifted = [table.get(char) for char in text]
    return "".join(c for c in shifted if c) if text and all(shifted) else None


_ACCENTS = {"hat": "\u0302", "bar": "\u0304", "tilde": "\u0303", "dot": "\u0307", "vec": "\u20d7"}
_ACCENTED = re.compile(r"\\(" + "|".join(_ACCENTS) + r")\{([A-Za-z])\}")
_UPRIGHT = re.compile(r"\\(?:text|mathrm|operatorname)\{([A-Za-z0-9 ]+)\}")


def unicode_math(tex: str) -> str | None:
    """A simple formula in Unicode (``x_i^2`` -> ``xᵢ²``, ``\\alpha \\leq 1`` -> ``α ≤ 1``), or None
    when it uses anything beyond letters, digits, operators, named symbols and single-character
    (or all-shiftable) sub- and superscripts: such a formula is better read as its TeX source."""
    # One letter under an accent takes a combining mark (\\hat{y} -> ŷ); \\text{MSE} is its words.
    tex = _ACCENTED.sub(lambda m: m[2] + _ACCENTS[m[1]], _UPRIGHT.sub(lambda m: m[1], tex.strip()))
    out = []
    for match in _TEX_PIECE.finditer(tex):
        command, mark, braced, single, char = match.groups()
        if command is not None:
            symbol = _SYMBOLS.get(command)
            if symbol is None:
                return None
            # A named operator runs into the letter after it (\log x): keep the space TeX implies.
            out.append(symbol + (" " if command.isalpha() and len(symbol) > 1 else ""))
        elif mark is not None:
            shifted = _script(braced if braced is not None else single, _SUPERSCRIPTS if mark == "^" else _SUBSCRIPTS)
            if shifted is None:
                return None
            out.append(shifted)
        elif _PLAIN.fullmatch(char):
            out.append(char)
        else:
            return None
    # NFC: a letter with its combining accent becomes the precomposed character where one exists (y + ̂ -> ŷ).
    text = unicodedata.normalize("NFC", re.sub(r" {2,}", " ", "".join(out)).strip())
    return text or None


# --- parsing -------------------------------------------------------------------------------------------

_DISPLAY_MATH = ("math_block", "math_block_label", "math_inline_double", "math_display")


def _tex_brackets(state: StateInline, silent: bool) -> bool:
    """``\\(...\\)`` inline and ``\\[...\\]`` display math, also inside a paragraph (models write both);
    without this rule Markdown would read ``\\[`` as an escaped bracket and ``\\_`` as an underscore."""
    start = state.pos
    if state.src[start] != "\\" or start + 1 >= state.posMax or state.src[start + 1] not in "[(":
        return False
    display = state.src[start + 1] == "["
    end = state.src.find("\\]" if display else "\\)", start + 2, state.posMax)
    if end < 0 or not state.src[start + 2 : end].strip():
        return False
    if not silent:
        token = state.push("math_display" if display else "math_inline", "math", 0)
        token.content = state.src[start + 2 : end]
        token.markup = state.src[start : start + 2]
    state.pos = end + 2
    return True


def _step_anchors(tokens: Sequence[Token]) -> None:
    """Steps link to themselves by id (``## name [task_id:0](ID)``), a link that leads nowhere outside
    deepstep. In HTML and PDF the heading becomes the anchor ``#ID``, and every link to ID (the
    low-confidence line, failed steps) jumps to it. Word keeps the id as the Markdown writes it."""
    headings: dict[str, Token] = {}
    for heading, inline in zip(tokens, tokens[1:], strict=False):
        if heading.type == "heading_open":
            for child in inline.children or []:
                href = str(child.attrGet("href") or "")
                if child.type == "link_open" and _STEP_ID.fullmatch(href):
                    headings.setdefault(href, heading)
    for href, heading in headings.items():
        heading.attrSet("id", href)
    for token in tokens:
        for child in token.children or []:
            if child.type == "link_open" and str(child.attrGet("href") or "") in headings:
                child.attrSet("href", f"#{child.attrGet('href')}")


_STEP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # no scheme, path or fragment: not an address


@cache
def _parser() -> MarkdownIt:
    # html off: raw HTML in an answer is escaped text. Tables and strikethrough on, as models write them.
    parser = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(["table", "strikethrough"])
    # No digits or spaces next to the dollars: "$5 and $10" is money, not math.
    parser.use(dollarmath_plugin, allow_space=False, allow_digits=False, allow_labels=False, double_inline=True)
    parser.inline.ruler.before("escape", "tex_brackets", _tex_brackets)
    for name in ("math_inline", *_DISPLAY_MATH):
        parser.add_render_rule(name, _render_math)
    parser.add_render_rule("image", _render_image)
    return parser


def parse(markdown: str) -> list[Token]:
    return _parser().parse(markdown)


# --- HTML ----------------------------------------------------------------------------------------------

# Chinese needs a CJK font: the first one installed wins (scripts/setup.sh installs WenQuanYi Micro Hei
# on Debian; Noto/Source Han, YaHei and PingFang are what other systems have). Latin text takes DejaVu.
CJK_FONTS = '"Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Micro Hei", "Microsoft YaHei", "PingFang SC"'
STYLESHEET = f"""
@page {{ size: A4; margin: 18mm 16mm 20mm;
  @bottom-center {{ content: counter(page) " / " counter(pages); font-family: "DejaVu Sans", sans-serif; font-size: 8pt; color: #666; }} }}
body {{ font-family: "DejaVu Sans", "Liberation Sans", Arial, {CJK_FONTS}, sans-serif; font-size: 10.5pt; line-height: 1.55;
  color: #111; max-width: 50em; margin: 2em auto; padding: 0 1em; }}
@media print {{ body {{ max-width: none; margin: 0; padding: 0; }} }}
h1, h2, h3, h4, h5, h6 {{ line-height: 1.25; margin: 1.1em 0 .4em; break-after: avoid; }}
h1 {{ font-size: 1.7em; border-bottom: 1px solid #999; padding-bottom: .2em; }}
h2 {{ font-size: 1.35em; }} h3 {{ font-size: 1.15em; }} h4, h5, h6 {{ font-size: 1em; }}
p, li, td, th {{ overflow-wrap: anywhere; }}
a {{ color: #1a4f8b; text-decoration: none; }}
code, pre, .tex {{ font-family: "DejaVu Sans Mono", "Liberation Mono", Consolas, "WenQuanYi Micro Hei Mono", {CJK_FONTS}, monospace;
  font-size: .9em; background: #f2f2f2; border-radius: 3px; }}
code {{ padding: 0 .2em; }}
pre {{ padding: .6em .8em; white-space: pre-wrap; overflow-wrap: anywhere; break-inside: avoid; }}
.math {{ font-style: italic; }}
.math-display {{ display: block; text-align: center; margin: .5em 0; }}
.math-display code {{ padding: .2em .4em; }}
blockquote {{ margin: .6em 0; padding-left: .8em; border-left: 3px solid #bbb; color: #333; }}
table {{ border-collapse: collapse; margin: .6em 0; }}
th, td {{ border: 1px solid #bbb; padding: .25em .5em; vertical-align: top; }}
th {{ background: #eee; }}
"""
# Defence in depth for a page that holds model output: no script runs and nothing remote loads.
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _render_math(renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    token = tokens[idx]
    readable = unicode_math(token.content)
    inner = f'<span class="math">{html.escape(readable)}</span>' if readable else f'<code class="tex">{html.escape(token.content.strip())}</code>'
    if token.type in _DISPLAY_MATH:
        block = f'<span class="math-display">{inner}</span>'
        return f"<p>{block}</p>\n" if token.block else block
    return inner


def _render_image(renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    """An image is its alt text and address: a report page loads nothing from elsewhere."""
    token = tokens[idx]
    return html.escape(f"[image: {token.content or 'untitled'}] ({token.attrGet('src') or ''})")


def markdown_to_html(markdown: str, *, title: str = "Report") -> str:
    """The report as a standalone HTML page (UTF-8, its stylesheet inline, no script)."""
    parser = _parser()
    tokens = parser.parse(markdown)
    _step_anchors(tokens)
    body = parser.renderer.render(tokens, parser.options, {})
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title.strip() or 'Report')}</title>\n<style>{STYLESHEET}</style>\n</head>\n"
        f"<body>\n<article>\n{body}</article>\n</body>\n</html>\n"
    )


# --- PDF -----------------------------------------------------------------------------------------------


def _weasyprint() -> Any:
    """WeasyPrint, or one line saying what to install: the package, or the Pango library it loads."""
    try:
        import weasyprint
    except ImportError:
        raise MissingDependencyError(f"writing PDF needs WeasyPrint: {PDF_INSTALL_HINT} (or export --html and print it to PDF)") from None
    except OSError as error:  # the package is there, the system library it opens is not
        raise MissingDependencyError(
            f"writing PDF needs the Pango library ({error}): on Debian/Ubuntu run apt-get install libpango-1.0-0 libpangoft2-1.0-0"
        ) from None
    return weasyprint


def html_to_pdf(page: str) -> bytes:
    """An HTML page (from ``markdown_to_html``) laid out as an A4 PDF; fetches nothing but ``data:`` URLs."""
    weasyprint = _weasyprint()
    fetcher = weasyprint.urls.URLFetcher(allowed_protocols={"data"}, timeout=1)
    pdf: bytes = weasyprint.HTML(string=page, url_fetcher=fetcher).write_pdf()
    return pdf


def markdown_to_pdf(markdown: str, *, title: str = "Report") -> bytes:
    return html_to_pdf(markdown_to_html(markdown, title=title))


# --- DOCX ----------------------------------------------------------------------------------------------

MONOSPACE_FONT = "Consolas"  # Word's; LibreOffice substitutes its own monospace
EAST_ASIAN_FONT = "Microsoft YaHei"  # Word's default Chinese UI font; other systems substitute their CJK font


class _DocxWriter:
    """Adds a token stream's blocks to a python-docx document, one paragraph (or table) per block."""

    def __init__(self, document: DocxDocument) -> None:
        from docx.enum.text import WD_ALIGN_PARAGRAPH  # python-docx loads only for a Word export

        self.centre = WD_ALIGN_PARAGRAPH.CENTER
        self.document = document
        self.lists: list[str] = []  # "bullet" or "ordered", innermost last
        self.item_numbers: list[str] = []  # the number of the ordered list item being written ("" for bullets)
        self.first_in_item = False
        self.quotes = 0

    def write(self, tokens: Sequence[Token]) -> None:
        index = 0
        while index < len(tokens):
            token = tokens[index]
            kind = token.type
            if kind == "heading_open":
                self._inline(self.document.add_heading(level=min(int(token.tag[1:]), 9)), tokens[index + 1].children or [])
                index += 3
                continue
            if kind == "paragraph_open":
                self._inline(self._paragraph(), tokens[index + 1].children or [])
                index += 3
                continue
            if kind == "table_open":
                index = self._table(tokens, index)
                continue
            if kind in ("bullet_list_open", "ordered_list_open"):
                self.lists.append("bullet" if kind == "bullet_list_open" else "ordered")
            elif kind in ("bullet_list_close", "ordered_list_close"):
                self.lists.pop()
            elif kind == "list_item_open":
                self.item_numbers.append(f"{token.info}{token.markup}" if self.lists[-1] == "ordered" else "")
                self.first_in_item = True
            elif kind == "list_item_close":
                self.item_numbers.pop()
            elif kind == "blockquote_open":
                self.quotes += 1
            elif kind == "blockquote_close":
                self.quotes -= 1
            elif kind in ("fence", "code_block"):
                self._code(self._paragraph(), token.content.rstrip("\n"))
            elif kind in _DISPLAY_MATH:
                self._math(self._paragraph(centered=True), token.content)
            elif kind == "hr":
                self.document.add_paragraph("* * *").alignment = self.centre
            index += 1

    def _paragraph(self, *, centered: bool = False) -> Paragraph:
        """A new paragraph styled for where it is: a list item (its first paragraph with the bullet or
        number), a later paragraph of an item, a quote, or body text."""
        depth = len(self.lists)
        suffix = f" {min(depth, 3)}" if depth > 1 else ""
        if depth and self.first_in_item:
            self.first_in_item = False
            number = self.item_numbers[-1]
            if number:  # numbered by hand: Word's "List Number" would continue one numbering across all lists
                paragraph = self.document.add_paragraph(f"{number} ", style=f"List{suffix}")
            else:
                paragraph = self.document.add_paragraph(style=f"List Bullet{suffix}")
        elif depth:
            paragraph = self.document.add_paragraph(style=f"List Continue{suffix}")
        elif self.quotes:
            paragraph = self.document.add_paragraph(style="Quote")
        else:
            paragraph = self.document.add_paragraph()
        if centered:
            paragraph.alignment = self.centre
        return paragraph

    def _inline(self, paragraph: Paragraph, children: Sequence[Token]) -> None:
        bold = italic = strike = 0
        links: list[str] = []
        for child in children:
            kind = child.type
            if kind == "text":
                run = paragraph.add_run(child.content)
                run.bold, run.italic, run.font.strike = bool(bold) or None, bool(italic) or None, bool(strike) or None
            elif kind == "softbreak":
                paragraph.add_run(" ")
            elif kind == "hardbreak":
                paragraph.add_run().add_break()
            elif kind == "code_inline":
                self._code(paragraph, child.content)
            elif kind == "math_inline":
                self._math(paragraph, child.content)
            elif kind in _DISPLAY_MATH:
                paragraph.add_run().add_break()
                self._math(paragraph, child.content)
                paragraph.add_run().add_break()
            elif kind in ("strong_open", "strong_close"):
                bold += 1 if kind.endswith("open") else -1
            elif kind in ("em_open", "em_close"):
                italic += 1 if kind.endswith("open") else -1
            elif kind in ("s_open", "s_close"):
                strike += 1 if kind.endswith("open") else -1
            elif kind == "link_open":
                links.append(str(child.attrGet("href") or ""))
            elif kind == "link_close":
                address = links.pop()
                if address:
                    paragraph.add_run(f" ({address})")
            elif kind == "image":
                paragraph.add_run(f"[image: {child.content or 'untitled'}] ({child.attrGet('src') or ''})")

    def _code(self, paragraph: Paragraph, text: str) -> None:
        for number, line in enumerate(text.split("\n")):
            if number:
                paragraph.add_run().add_break()
            paragraph.add_run(line).font.name = MONOSPACE_FONT

    def _math(self, paragraph: Paragraph, tex: str) -> None:
        readable = unicode_math(tex)
        if readable:
            paragraph.add_run(readable).italic = True
        else:
            self._code(paragraph, tex.strip())

    def _table(self, tokens: Sequence[Token], index: int) -> int:
        """A Markdown table as a Word table with a bold header row; returns the index after it."""
        rows: list[list[Token]] = []
        header_rows = 0
        in_header = False
        while tokens[index].type != "table_close":
            kind = tokens[index].type
            if kind == "thead_open":
                in_header = True
            elif kind == "thead_close":
                in_header = False
            elif kind == "tr_open":
                rows.append([])
                header_rows += in_header
            elif kind == "inline":
                rows[-1].append(tokens[index])
            index += 1
        columns = max((len(row) for row in rows), default=0)
        if columns:
            table = self.document.add_table(rows=len(rows), cols=columns)
            table.style = "Table Grid"
            for row_number, row in enumerate(rows):
                for column, cell_text in enumerate(row):
                    paragraph = table.cell(row_number, column).paragraphs[0]
                    self._inline(paragraph, cell_text.children or [])
                    if row_number < header_rows:
                        for run in paragraph.runs:
                            run.bold = True
        return index + 1


def markdown_to_docx(markdown: str, *, title: str = "Report") -> bytes:
    """The report as a Word document (.docx bytes): headings, paragraphs, lists, emphasis, code,
    math, links as text with their address, tables."""
    import docx
    from docx.oxml.ns import qn

    document = docx.Document()
    document.core_properties.title = title.strip() or "Report"
    # Chinese runs take the East Asian font slot; without one Word may pick a font without the glyphs.
    document.styles["Normal"].element.get_or_add_rPr().get_or_add_rFonts().set(qn("w:eastAsia"), EAST_ASIAN_FONT)
    _DocxWriter(document).write(parse(markdown))
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


__all__ = ["html_to_pdf", "markdown_to_docx", "markdown_to_html", "markdown_to_pdf", "parse", "unicode_math"]
