"""Does indexing a large PDF stream? Peak RSS and pages per second of `deepstep corpus index` on growing prefixes
of one PDF, and the Python heap while its passages are built, against the size of the passages themselves.

Run: .venv/bin/python -m benchmarks.pdf_streaming PDF [--pages 1 100 500 1000 0] [--json]
(0 = every page; the R reference manual fullrefman.pdf from `deepstep corpus fetch r-manuals --all` has 2,415)

Each prefix is written as its own PDF (PDFium copies the pages) into a folder of its own and indexed by a
fresh `deepstep corpus index` process with an empty DEEPSTEP_HOME; its peak RSS is the child's ru_maxrss
(os.wait4). If the reader held the whole text, RSS would grow by the text twice over (the text and the
passages cut from it); streaming, it grows by the passages and the index alone. The heap figure is
tracemalloc's peak over ``file_passages`` on the whole file, less the passages it returns.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import pypdfium2 as pdfium

from deepstep.corpus import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_TOKENS, file_passages

MB = 2**20


def write_prefix(source: Path, pages: int, target: Path) -> int:
    """The first ``pages`` pages of ``source`` (all when 0) as the PDF ``target``; returns how many were written."""
    original = pdfium.PdfDocument(source)
    try:
        count = len(original) if pages <= 0 else min(pages, len(original))
        copy = pdfium.PdfDocument.new()
        copy.import_pages(original, list(range(count)))
        copy.save(target)
        copy.close()
        return count
    finally:
        original.close()


def index_run(folder: Path, home: Path) -> dict[str, float | str]:
    """Index ``folder`` in a fresh `deepstep corpus index` process: its peak RSS, wall time and summary line."""
    environment = {**os.environ, "DEEPSTEP_HOME": str(home)}
    with tempfile.TemporaryFile() as output_file:  # a file, not a pipe: the child never blocks on a full pipe before wait4
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "deepstep.cli", "corpus", "index", str(folder)], env=environment, stdout=output_file, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        output_file.seek(0)
        output = output_file.read().decode(errors="replace")
    if process.returncode != 0:
        raise SystemExit(f"deepstep corpus index {folder} failed: {output.strip()}")
    return {"peak_rss_mb": usage.ru_maxrss * 1024 / MB, "seconds": seconds, "summary": output.strip().splitlines()[-1]}


def heap_while_chunking(pdf: Path) -> dict[str, float]:
    """tracemalloc's peak over building ``pdf``'s passages, and the size of those passages' text."""
    data = pdf.read_bytes()
    tracemalloc.start()
    started = time.perf_counter()
    passages = file_passages(pdf.name, data, DEFAULT_CHUNK_TOKENS, DEFAULT_CHUNK_OVERLAP)
    seconds = time.perf_counter() - started
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert not isinstance(passages, str), passages
    text_bytes = sum(sys.getsizeof(p.text) for p in passages)
    return {
        "passages": len(passages),
        "passage_text_mb": text_bytes / MB,
        "passages_retained_mb": retained / MB,
        "heap_peak_mb": peak / MB,
        "heap_peak_beyond_passages_mb": (peak - retained) / MB,
        "chunking_seconds": seconds,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pdf", type=Path)
    parser.add_argument("--pages", type=int, nargs="+", default=[1, 100, 500, 1000, 0], help="prefix lengths (0 = every page)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for pages in args.pages:
            folder = Path(work) / f"prefix-{pages}"
            folder.mkdir()
            written = write_prefix(args.pdf, pages, folder / args.pdf.name)
            run = index_run(folder, Path(work) / f"home-{pages}")
            pdf_mb = (folder / args.pdf.name).stat().st_size / MB
            rows.append({"pages": written, "pdf_mb": pdf_mb, **run, "pages_per_s": written / float(run["seconds"])})
    heap = heap_while_chunking(args.pdf)
    if args.json:
        print(json.dumps({"pdf": str(args.pdf), "runs": rows, "heap": heap}, indent=2))
        return 0
    print(f"`deepstep corpus index` on the first N pages of {args.pdf.name} (fresh process and DEEPSTEP_HOME each)")
    for row in rows:
        speed = f"{row['seconds']:.2f} s, {row['pages_per_s']:.0f} pages/s"
        print(f"  {row['pages']:5d} pages ({row['pdf_mb']:.1f} MB): peak RSS {row['peak_rss_mb']:.0f} MB, {speed}")
        print(f"        {row['summary']}")
    print(
        f"file_passages on all of it: {heap['passages']} passages holding {heap['passage_text_mb']:.1f} MB of text "
        f"({heap['passages_retained_mb']:.1f} MB with their records); Python heap peak {heap['heap_peak_mb']:.1f} MB, "
        f"{heap['heap_peak_beyond_passages_mb']:.2f} MB beyond the passages; {heap['chunking_seconds']:.2f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
