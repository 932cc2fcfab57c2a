"""Which language a corpus is in, and whether a question is written in another script.

The corpus's language is detected by ``langdetect`` (Google's language-detection profiles, offline,
Apache-2.0) over a sample of its passages: on long text it is reliable. On a short question it is not
("How does gradient boosting work?" comes out Afrikaans at p = 0.99999), so a question is compared
with its corpus by writing system only: a Chinese question over an English corpus is cross-language;
a French question over an English corpus is not detected, and ``search_language`` says so explicitly.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from typing import NamedTuple

# langdetect's codes for the languages people most often ask in; any other is shown as its code.
LANGUAGE_NAMES = {
    "ar": "Arabic",
    "de": "German",
    "en": "English",
    "es": "Spanish",
    "fr": "French",
    "hi": "Hindi",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "nl": "Dutch",
    "pl": "Polish",
    "pt": "Portuguese",
    "ru": "Russian",
    "tr": "Turkish",
    "uk": "Ukrainian",
    "vi": "Vietnamese",
    "zh-cn": "Chinese",
    "zh-tw": "Chinese",
}

# Enough text for a sure detection; more only costs time.
SAMPLE_CHARS = 20_000


class CorpusLanguage(NamedTuple):
    name: str  # e.g. "English": what prompts ask queries to be written in
    script: str  # the writing system most of its letters use, e.g. "LATIN", "CJK"


def dominant_script(text: str) -> str | None:
    """The writing system of most letters in ``text`` ("LATIN", "CJK", "HANGUL", "CYRILLIC", ...), or None
    without letters. Chinese characters, kana and CJK punctuation count as one script, "CJK"."""
    scripts: Counter[str] = Counter()
    for char in text:
        if char.isalpha():
            name = unicodedata.name(char, "")
            first = name.split(" ", 1)[0]
            scripts["CJK" if first in ("CJK", "HIRAGANA", "KATAKANA") else first] += 1
    return scripts.most_common(1)[0][0] if scripts else None


def detect_corpus_language(texts: list[str]) -> CorpusLanguage | None:
    """The language of a corpus from its passages (evenly sampled up to ``SAMPLE_CHARS``), or None when it has no letters."""
    sample = _even_sample(texts, SAMPLE_CHARS)
    script = dominant_script(sample)
    if script is None:
        return None
    from langdetect import DetectorFactory, LangDetectException, detect  # loads its profiles once, on first use

    DetectorFactory.seed = 0  # langdetect samples at random; a fixed seed gives every run the same answer
    try:
        code = detect(sample)
    except LangDetectException:
        return None
    return CorpusLanguage(LANGUAGE_NAMES.get(code, code), script)


def _even_sample(texts: list[str], limit: int) -> str:
    """Passages taken evenly across the corpus until ``limit`` characters: its first files alone may be a licence."""
    if not texts:
        return ""
    total = sum(len(text) for text in texts)
    stride = max(1, round(total / limit))
    picked: list[str] = []
    size = 0
    for text in texts[::stride]:
        picked.append(text)
        size += len(text)
        if size >= limit:
            break
    return "\n".join(picked)[:limit]


def cross_language_search(question: str, corpus: CorpusLanguage | None) -> str | None:
    """The language to write search queries in when ``question`` is written in another script than the corpus."""
    if corpus is None:
        return None
    script = dominant_script(question)
    return corpus.name if script is not None and script != corpus.script else None
