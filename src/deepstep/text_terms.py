"""The words deepstep matches text by (pure): stemmed English words without stop words, CJK characters and bigrams.

Shared by retrieval (``bm25_index.tokenize``, whose output keys the on-disk index cache, so it must not
change without bumping ``bm25_index._INDEX_FORMAT``) and the claim check (``deepstep.claims``).
"""

from __future__ import annotations

import functools
import re
import threading
import unicodedata

import Stemmer

from deepstep.corpus import CJK_CHARACTERS

CJK_RUN = re.compile(f"[{CJK_CHARACTERS}]+")
_TOKEN = re.compile(rf"[{CJK_CHARACTERS}]+|[^\W_{CJK_CHARACTERS}]+")

# Besides bm25s's English stop words (read on first use: importing bm25s loads numpy and its index code,
# which drawing the graph or showing a stored report does not need).
QUESTION_WORDS = {
    "what",
    "which",
    "who",
    "whom",
    "why",
    "how",
    "when",
    "where",
    "does",
    "do",
    "did",
    "can",
    "should",
    "would",
    "could",
    "i",
    "you",
    "we",
    "me",
    "my",
    "your",
    "our",
    "its",
    "about",
}


@functools.cache
def stopwords() -> frozenset[str]:
    """English words that say nothing about a text's subject."""
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN) | QUESTION_WORDS


CJK_STOPWORDS = frozenset("的了是在和与及或也就都而之吗呢么")

_local = threading.local()


def tokenize(text: str) -> list[str]:
    """Index terms: stemmed English words without stopwords, CJK character unigrams and bigrams."""
    words: list[str] = []
    cjk: list[str] = []
    skip = stopwords()
    for run in _TOKEN.findall(unicodedata.normalize("NFKC", text).lower()):
        if CJK_RUN.match(run):
            cjk.extend(cjk_terms(run))
        elif len(run) > 1 and run not in skip:
            words.append(run)
    return stem_words(words) + cjk


def cjk_terms(run: str) -> list[str]:
    """A run of CJK characters as its characters (stop characters out) then its character bigrams."""
    return [char for char in run if char not in CJK_STOPWORDS] + [run[i : i + 2] for i in range(len(run) - 1)]


def stem_words(words: list[str]) -> list[str]:
    """English stems of lowercased ``words``, in order."""
    return _stemmer().stemWords(words)


def _stemmer() -> Stemmer.Stemmer:
    # PyStemmer objects are not thread-safe and graph nodes retrieve from worker threads.
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = _local.stemmer = Stemmer.Stemmer("english")
    return stemmer


__all__ = ["CJK_RUN", "CJK_STOPWORDS", "cjk_terms", "stem_words", "stopwords", "tokenize"]
