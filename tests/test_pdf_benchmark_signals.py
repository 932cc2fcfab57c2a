"""The text quality signals of benchmarks/pdf_libraries.py, computed by hand: the PDF library choice rests on them."""

from __future__ import annotations

from string import ascii_lowercase

from benchmarks.pdf_libraries import PageStats, index_order


def test_each_noise_signal_is_counted_once_and_spaces_are_not_noise():
    stats = PageStats(sample_pages=(2,))
    stats.add(" \n")  # a page without text, as a scanned page reads
    stats.add("Chapter 1 5\nthe \ufb01rst com-\npatibility and inter\ufffeface (cid:136) \x88 x\u00a0y\n")
    counts = stats.as_dict()
    assert (counts["pages"], counts["pages_with_text"]) == (2, 1)
    assert counts["ligatures"] == 1  # ﬁ
    assert counts["hyphen_breaks"] == 1  # com-\npatibility
    assert counts["soft_hyphens"] == 1  # PDFium's U+FFFE
    assert counts["unmapped"] == 1  # pdfminer's (cid:136)
    assert (counts["nonprintable"], counts["nonprintable_examples"]) == (1, ["0088"])  # the no-break space is layout
    # Chapter the ﬁrst com patibility and inter face cid: numbers, one-letter tokens and U+FFFE are not words.
    assert counts["words"] == 9
    assert list(counts["samples"]) == [2]


def test_index_order_tells_columns_read_in_order_from_columns_interleaved():
    first_column, second_column = ascii_lowercase[:10], ascii_lowercase[10:20]
    in_order = "\n".join(f"{letter}entry, 12" for letter in first_column + second_column)
    interleaved = "\n".join(f"{left}entry, 12\n{right}entry, 34" for left, right in zip(first_column, second_column, strict=True))
    assert index_order(in_order) == 1.0
    assert index_order(interleaved) == 10 / 19  # a<k, k>b, b<l, ...: every second pair goes back
    assert index_order("aentry\nbentry") is None  # too few entries to judge
