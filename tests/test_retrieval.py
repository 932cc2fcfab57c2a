"""BM25 retrieval: loading and chunking files, ranking, and the on-disk index cache."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from deepstep import bm25_index
from deepstep.corpus import UNIT
from deepstep.errors import CorpusError
from deepstep.retrieval import (
    BM25Retriever,
    Passage,
    contexts_from_documents,
    demo_corpus_dir,
    load_passages,
)

TEST_CORPUS = Path(__file__).parent / "data" / "corpus"
METADATA_KEYS = {"ref_id", "chunk_id", "title", "source", "score"}


def words(text: str) -> list[str]:
    return UNIT.findall(text)


@pytest.fixture(scope="module")
def demo() -> BM25Retriever:
    return BM25Retriever.from_directory(demo_corpus_dir())


@pytest.fixture
def corpus_copy(tmp_path) -> Path:
    return Path(shutil.copytree(TEST_CORPUS, tmp_path / "corpus"))


@pytest.fixture
def build_count(monkeypatch) -> list[int]:
    calls = [0]
    real = bm25_index._build_index

    def counting(passages):
        calls[0] += 1
        return real(passages)

    monkeypatch.setattr(bm25_index, "_build_index", counting)
    return calls


# --- loading and chunking ---


def test_edge_files_are_skipped_and_counted():
    passages, skipped = load_passages(TEST_CORPUS)
    assert skipped == 3  # empty.md, blob.txt (NUL bytes), latin1.txt (not UTF-8)
    sources = {p.source for p in passages}
    assert sources == {"gradient-descent.md", "photosynthesis.txt", "volcanoes.rst", "损失函数.md"}


def test_titles_from_markdown_rst_or_file_stem():
    titles = {p.source: p.title for p in load_passages(TEST_CORPUS)[0]}
    assert titles == {
        "gradient-descent.md": "Gradient Descent",
        "volcanoes.rst": "Volcanoes",
        "photosynthesis.txt": "photosynthesis",
        "损失函数.md": "损失函数",
    }


def test_ids_are_stable_and_derived_from_the_relative_path(tmp_path):
    first, _ = load_passages(TEST_CORPUS)
    second, _ = load_passages(shutil.copytree(TEST_CORPUS, tmp_path / "elsewhere"))
    assert first == second
    passage = next(p for p in first if p.source == "volcanoes.rst")
    assert passage.ref_id == hashlib.sha1(b"volcanoes.rst").hexdigest()[:16]
    assert passage.chunk_id == f"{passage.ref_id}:0"


def test_nested_files_use_posix_sources_and_hidden_files_are_ignored(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "deeper" / "note.markdown").write_text("# Note\n\nNested text.", encoding="utf-8")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "secret.md").write_text("hidden words", encoding="utf-8")
    (tmp_path / "data.csv").write_text("a,b", encoding="utf-8")
    passages, skipped = load_passages(tmp_path)
    assert [p.source for p in passages] == ["sub/deeper/note.markdown"]
    assert skipped == 0


def test_chunks_respect_size_and_paragraphs(tmp_path):
    paragraphs = [" ".join(f"p{i}w{j}" for j in range(40)) for i in range(10)]
    (tmp_path / "doc.md").write_text("\n\n".join(paragraphs), encoding="utf-8")
    passages, _ = load_passages(tmp_path, chunk_tokens=100, chunk_overlap=20)
    assert len(passages) > 1
    assert [p.chunk_id for p in passages] == [f"{passages[0].ref_id}:{i}" for i in range(len(passages))]
    for passage in passages:
        assert len(words(passage.text)) <= 100
        # Chunks end on a paragraph boundary: the last word closes a paragraph.
        assert words(passage.text)[-1].endswith("w39")
    # Every paragraph is covered.
    covered = set().union(*(words(p.text) for p in passages))
    assert covered == set(" ".join(paragraphs).split())


def test_long_paragraph_is_split_by_words_with_exact_overlap(tmp_path):
    (tmp_path / "long.txt").write_text(" ".join(f"w{i}" for i in range(500)), encoding="utf-8")
    passages, _ = load_passages(tmp_path, chunk_tokens=100, chunk_overlap=20)
    chunks = [words(p.text) for p in passages]
    assert [len(c) for c in chunks[:-1]] == [100] * (len(chunks) - 1)
    for previous, current in itertools.pairwise(chunks):
        assert current[:20] == previous[-20:]
    assert chunks[-1][-1] == "w499"


def test_long_list_is_split_at_line_ends(tmp_path):
    items = "\n".join(f"- item{i} " + " ".join(f"i{i}w{j}" for j in range(9)) for i in range(30))
    (tmp_path / "list.md").write_text(items, encoding="utf-8")
    passages, _ = load_passages(tmp_path, chunk_tokens=100, chunk_overlap=20)
    assert len(passages) > 1
    assert all(words(p.text)[-1].endswith("w8") for p in passages)


def test_cjk_characters_count_as_words(tmp_path):
    (tmp_path / "zh.md").write_text("损失函数" * 100, encoding="utf-8")
    passages, _ = load_passages(tmp_path, chunk_tokens=50, chunk_overlap=10)
    assert all(len(p.text) <= 50 for p in passages)
    assert len(passages) == 10  # 400 characters, step 40


def test_invalid_chunk_settings():
    with pytest.raises(CorpusError, match="chunk_overlap < chunk_tokens"):
        load_passages(TEST_CORPUS, chunk_tokens=10, chunk_overlap=10)


def test_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(CorpusError, match="does not exist: give the path of a folder"):
        load_passages(tmp_path / "nope")
    with pytest.raises(CorpusError, match="does not exist"):
        BM25Retriever.from_directory(tmp_path / "nope", cache_dir=tmp_path / "cache")


def test_folder_without_readable_files_says_what_to_do(tmp_path):
    (tmp_path / "empty.md").write_bytes(b"")
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01")
    with pytest.raises(
        CorpusError, match=r"has no readable files \(2 files skipped.*\): add Markdown, text, .* or EPUB files to it, or use another folder"
    ):
        load_passages(tmp_path)


# --- ranking ---


def test_english_query_finds_the_right_file(demo):
    docs = demo.invoke("mean squared error")
    assert docs[0].metadata["source"] == "regression-losses-mse-rmse-mae.md"
    assert demo.invoke("What is a loss function?")[0].metadata["source"] == "loss-functions-overview.md"


def test_chinese_query_finds_a_chinese_file(demo):
    docs = demo.invoke("什么是损失函数？")
    assert docs[0].metadata["source"] == "损失函数概述.md"


def test_chinese_and_english_in_the_small_corpus():
    retriever = BM25Retriever.from_directory(TEST_CORPUS)
    assert retriever.invoke("什么是损失函数")[0].metadata["source"] == "损失函数.md"
    assert retriever.invoke("lava eruptions")[0].metadata["source"] == "volcanoes.rst"
    assert retriever.skipped_files == 3


@pytest.mark.parametrize("query", ["", "   \n", "xyzzy plugh", "the of and", "?!"])
def test_queries_without_known_words_return_nothing(demo, query):
    assert demo.invoke(query) == []


def test_k_is_respected_and_changeable(demo):
    assert len(demo.invoke("loss")) == 4
    demo_copy = demo.model_copy(update={"k": 2})
    assert len(demo_copy.invoke("loss")) == 2
    retriever = BM25Retriever.from_directory(TEST_CORPUS, k=50)
    assert len(retriever.invoke("gradient learning rate")) == 1  # zero-score passages are dropped
    retriever.k = 0
    assert retriever.invoke("gradient") == []


def test_scores_descend_and_ties_keep_corpus_order():
    texts = ["apple pie", "pear", "apple pie"]
    passages = [Passage(f"r{i}", f"r{i}:0", "t", f"s{i}", text) for i, text in enumerate(texts)]
    docs = BM25Retriever.from_passages(passages, k=5).invoke("apple")
    assert [d.metadata["chunk_id"] for d in docs] == ["r0:0", "r2:0"]
    ranked = BM25Retriever.from_directory(demo_corpus_dir(), k=10).invoke("cross entropy loss")
    scores = [d.metadata["score"] for d in ranked]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)


def test_metadata_and_contexts(demo):
    docs = demo.invoke("hinge loss margin")
    assert all(set(d.metadata) == METADATA_KEYS for d in docs)
    assert docs[0].metadata["title"] == "Hinge Loss and Support Vector Machines"
    contexts = contexts_from_documents(docs)
    assert set(contexts[0]) == {"ref_id", "chunk_id", "score", "text", "title", "source"}
    assert contexts[0]["score"] == round(docs[0].metadata["score"], 4)
    assert contexts[0]["text"] == docs[0].page_content


def test_from_passages_rejects_an_empty_list():
    with pytest.raises(CorpusError):
        BM25Retriever.from_passages([])


# --- cache ---


def test_cache_is_reused_and_rebuilt_when_the_corpus_changes(corpus_copy, tmp_path, build_count):
    cache = tmp_path / "cache"
    first = BM25Retriever.from_directory(corpus_copy, cache_dir=cache)
    assert build_count == [1]
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1
    again = BM25Retriever.from_directory(corpus_copy, cache_dir=cache, k=2)
    assert build_count == [1]
    assert list(again.passages) == list(first.passages) and again.k == 2 and again.skipped_files == 3
    assert again.invoke("lava") == first.invoke("lava")[:2]

    (corpus_copy / "tides.md").write_text("# Tides\n\nThe moon pulls the oceans into tides.", encoding="utf-8")
    changed = BM25Retriever.from_directory(corpus_copy, cache_dir=cache)
    assert build_count == [2]
    assert changed.invoke("moon tides")[0].metadata["source"] == "tides.md"


def test_an_index_of_an_earlier_content_is_dropped(corpus_copy, tmp_path, build_count):
    cache = tmp_path / "cache"
    other = Path(shutil.copytree(corpus_copy, tmp_path / "other"))
    BM25Retriever.from_directory(corpus_copy, cache_dir=cache)
    BM25Retriever.from_directory(other, cache_dir=cache)  # same content elsewhere: one shared entry
    BM25Retriever.from_directory(corpus_copy, cache_dir=cache, chunk_tokens=40, chunk_overlap=5)
    entries = lambda: sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))  # noqa: E731
    assert len(entries()) == 2 and build_count == [2]
    (corpus_copy / "volcanoes.rst").write_text("Volcanoes\n=========\n\nMagma rises.", encoding="utf-8")
    before = entries()
    BM25Retriever.from_directory(corpus_copy, cache_dir=cache)
    # The old default-chunking entry (built for this folder) is replaced; the other chunking's stays.
    after = entries()
    assert len(after) == 2 and len(set(before) & set(after)) == 1 and build_count == [3]


def test_chunk_settings_are_part_of_the_cache_key(corpus_copy, tmp_path, build_count):
    BM25Retriever.from_directory(corpus_copy, cache_dir=tmp_path / "cache")
    BM25Retriever.from_directory(corpus_copy, cache_dir=tmp_path / "cache", chunk_tokens=20, chunk_overlap=5)
    assert build_count == [2]


@pytest.mark.parametrize("damage", ["garbage_params", "missing_passages", "garbage_passages", "passage_count", "truncated_array"])
def test_corrupt_cache_is_rebuilt(corpus_copy, tmp_path, build_count, damage):
    cache = tmp_path / "cache"
    BM25Retriever.from_directory(corpus_copy, cache_dir=cache)
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    if damage == "garbage_params":
        (entry / "params.index.json").write_text("{not json", encoding="utf-8")
    elif damage == "missing_passages":
        (entry / "passages.sqlite3").unlink()
    elif damage == "garbage_passages":
        (entry / "passages.sqlite3").write_bytes(b"not a database" * 100)
    elif damage == "passage_count":  # a table that lost rows, e.g. a copy cut short
        (entry / "index.json").write_text((entry / "index.json").read_text().replace('"passages": ', '"passages": 1'), encoding="utf-8")
    else:
        (entry / "data.csc.index.npy").write_bytes(b"\x93NUMPY")
    rebuilt = BM25Retriever.from_directory(corpus_copy, cache_dir=cache)
    assert build_count == [2]
    assert rebuilt.invoke("lava")[0].metadata["source"] == "volcanoes.rst"
    BM25Retriever.from_directory(corpus_copy, cache_dir=cache)
    assert build_count == [2]  # the rebuilt cache is good again


def test_unwritable_cache_is_not_fatal(corpus_copy, tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be", encoding="utf-8")
    retriever = BM25Retriever.from_directory(corpus_copy, cache_dir=blocker)
    assert retriever.invoke("lava")


def test_demo_corpus_is_bundled():
    files = sorted(p.name for p in demo_corpus_dir().glob("*.md"))
    assert 10 <= len(files) <= 14
    assert "损失函数概述.md" in files
    assert all(p.read_text(encoding="utf-8").startswith("# ") for p in demo_corpus_dir().glob("*.md"))


# --- citations of retrieved contexts ---


def test_grouped_citations_keep_their_valid_numbers():
    from deepstep.citations import cited_numbers, remove_invalid_citations

    text, removed = remove_invalid_citations("Both [1, 5] agree [3,4] and [6, 7].", 3)
    assert (text, removed) == ("Both [1] agree [3] and.", 4)
    assert cited_numbers("a [2, 1] b [3][1]") == [2, 1, 3]


def test_citations_are_renumbered_into_the_reports_numbering():
    from deepstep.citations import renumber_citations

    text, dropped = renumber_citations("MSE [1] and MAE [2, 1]; see [3][2] and `x[1]`.", {1: 4, 2: 1})
    assert (text, dropped) == ("MSE [4] and MAE [1, 4]; see [1] and `x[1]`.", 1)
    assert renumber_citations("Kept [1,2] as written.", {1: 1, 2: 2}) == ("Kept [1,2] as written.", 0)
    assert renumber_citations("Merged [1, 2].", {1: 7, 2: 7}) == ("Merged [7].", 0)


def test_code_is_never_mistaken_for_a_citation():
    from deepstep.citations import cited_numbers, remove_invalid_citations

    answer = "Read `reg.coef_[0]` [1] and\n```python\nX[:, 0]\nscores[9]\n```\nthen [9]."
    text, removed = remove_invalid_citations(answer, 2)
    assert text == "Read `reg.coef_[0]` [1] and\n```python\nX[:, 0]\nscores[9]\n```\nthen." and removed == 1
    assert cited_numbers(answer) == [1, 9]


def test_references_list_the_title_and_source_of_each_cited_passage(demo):
    from deepstep import render, step_tree

    contexts = contexts_from_documents(demo.invoke("hinge loss margin"))
    tree = step_tree.new_tree("q")
    step = {"name": "Hinge", "level": "0", "status": "done", "contexts": contexts, "answer": "Hinge loss [2] penalizes margins [1][2] [9]."}
    tree.add_node("s1", **{**step_tree.STEP_DEFAULTS, **step})
    tree.add_edge(step_tree.ROOT_ID, "s1")
    references = render.cited_passages(tree)
    assert [(c["chunk_id"], c["number"]) for c in references] == [(contexts[1]["chunk_id"], 2), (contexts[0]["chunk_id"], 1)]
    report = render.markdown_report(tree)
    for context in references:
        assert f"{context['title']} ({context['source']})" in report and context["chunk_id"] in report


# --- the retrieval benchmark ---


def test_retrieval_benchmark_scores_labelled_questions(tmp_path):
    import json
    import subprocess
    import sys

    questions = {
        "questions": [
            {"question": "What is the margin in hinge loss?", "expected": [{"source": "hinge-loss.md", "phrase": "is  called the MARGIN"}]},
            {"question": "What is the margin in hinge loss, again?", "expected": [{"source": "hinge-loss.md", "phrase": "not in the text"}]},
        ]
    }
    (tmp_path / "questions.json").write_text(json.dumps(questions), encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "benchmarks.retrieval",
        "--corpus",
        str(demo_corpus_dir()),
        "--questions",
        str(tmp_path / "questions.json"),
        "--repeat",
        "2",
        "--json",
    ]
    done = subprocess.run(command, cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=120, check=True)
    figures = json.loads(done.stdout)
    assert figures["questions"] == 2 and figures["queries"] == 4
    assert figures["recall"] == {"4": 0.5, "10": 0.5} and figures["document_recall"] == {"4": 1.0, "10": 1.0}
    assert figures["misses"] == ["What is the margin in hinge loss, again?"]
    assert figures["build"]["passages"] > 0 and 0 < figures["p50_ms"] <= figures["p95_ms"]


def test_cross_language_benchmark_scores_the_question_nodes_english_query(tmp_path, fake_llm):
    """Chinese questions over an English corpus find nothing on their own; the fake model's ``Search query:`` line
    (its dictionary: 损失函数 -> loss function, 交叉验证 -> cross-validation) finds both answers."""
    import json
    import os
    import subprocess
    import sys

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "loss.md").write_text(
        "# Loss functions\n\nA loss function measures how far the predictions of a model are from the targets. "
        "Training a model means finding the parameters that make the loss on the training data as small as possible.\n",
        encoding="utf-8",
    )
    (corpus / "validation.md").write_text(
        "# Cross-validation\n\nCross-validation estimates how well a model generalises: the data is split into folds, "
        "and the model is trained on all folds but one and scored on the one left out, once for every fold.\n",
        encoding="utf-8",
    )
    questions = {
        "questions": [
            {"question": "What is a loss function?", "expected": [{"source": "loss.md", "phrase": "A loss function measures"}]},
            {"question": "What is cross-validation?", "expected": [{"source": "validation.md", "phrase": "the data is split into folds"}]},
        ]
    }
    translations = {
        "questions": [
            {"english": "What is a loss function?", "chinese": "什么是损失函数？"},
            {"english": "What is cross-validation?", "chinese": "什么是交叉验证？"},
        ]
    }
    (tmp_path / "questions.json").write_text(json.dumps(questions), encoding="utf-8")
    (tmp_path / "zh.json").write_text(json.dumps(translations, ensure_ascii=False), encoding="utf-8")
    command = [sys.executable, "-m", "benchmarks.cross_language", "--corpus", str(corpus), "--questions", str(tmp_path / "questions.json")]
    command += ["--translations", str(tmp_path / "zh.json"), "--json"]
    env = {**os.environ, "OPENAI_BASE_URL": fake_llm.base_url, "DEEPSTEP_HOME": str(tmp_path / "home")}
    done = subprocess.run(command, cwd=Path(__file__).parent.parent, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout)
    assert figures["questions"] == 2 and figures["corpus_language"] == "English" and figures["detected_cross_language"] == 2
    assert figures["recall_english"] == 1.0 and figures["recall_chinese_without"] == 0.0
    assert figures["recall_chinese_with"] == 1.0 and figures["recall_chinese_exact_query"] == 1.0
    assert figures["query_line_share"] == 1.0
    assert [reply["search_query"] for reply in figures["replies"]] == ["loss function definition", "cross-validation definition"]
    assert [entry["task"] for entry in fake_llm.log()] == ["question", "question"]  # one question-node call per question, nothing else


def test_best_k_is_a_stable_sort_of_the_positive_scores_cut_to_k():
    from deepstep.bm25_index import best_k

    scores = np.array([0.0, 2.0, 5.0, 2.0, -1.0, 2.0, 7.0])
    assert best_k(scores, 3).tolist() == [6, 2, 1]  # the tie at the cut (2.0 at 1, 3, 5) goes by corpus order
    assert best_k(scores, 5).tolist() == [6, 2, 1, 3, 5]
    assert best_k(scores, 7).tolist() == [6, 2, 1, 3, 5]  # zero and negative scores are no hits
    assert best_k(np.zeros(4), 2).tolist() == []
    random = np.random.default_rng(0).integers(0, 4, 500).astype(float)  # many ties
    for k in (1, 4, 50, 499, 600):
        assert best_k(random, k).tolist() == [i for i in np.argsort(-random, kind="stable")[:k] if random[i] > 0]


def test_a_cached_index_reads_its_passages_from_the_cache_by_position(corpus_copy, tmp_path):
    from deepstep.bm25_index import BM25Index, PassageTable

    built = BM25Index.from_directory(corpus_copy, cache_dir=tmp_path / "cache")
    cached = BM25Index.from_directory(corpus_copy, cache_dir=tmp_path / "cache")
    assert isinstance(cached.passages, PassageTable) and cached.from_cache
    assert len(cached.passages) == len(built.passages) and list(cached.passages) == list(built.passages)
    assert cached.passages[-1] == built.passages[-1] and cached.passages[1::2] == list(built.passages[1::2])
    with pytest.raises(IndexError):
        cached.passages[len(built.passages)]
    assert cached.search("lava", 2) == built.search("lava", 2)


def test_a_later_start_reads_no_unchanged_file_and_any_write_is_seen(corpus_copy, tmp_path, monkeypatch, build_count):
    """Digests are kept with each file's stat; a write that keeps the size and sets the mtime back still changes
    the ctime, so it is read and hashed again (and the index rebuilt)."""
    from deepstep import corpus as corpus_module

    monkeypatch.setattr(corpus_module, "SETTLED_NS", 0)  # this test's files were just written
    reads: list[str] = []
    real_read = corpus_module.read_regular_file
    monkeypatch.setattr(corpus_module, "read_regular_file", lambda path, *a: reads.append(path.name) or real_read(path, *a))
    cache = tmp_path / "cache"
    BM25Retriever.from_directory(corpus_copy, cache_dir=cache)
    reads.clear()
    assert BM25Retriever.from_directory(corpus_copy, cache_dir=cache).from_cache and reads == [] and build_count == [1]
    volcanoes = corpus_copy / "volcanoes.rst"
    before = volcanoes.stat()
    volcanoes.write_text(volcanoes.read_text(encoding="utf-8").replace("lava", "LAVA"), encoding="utf-8")
    os.utime(volcanoes, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size, same mtime: only the ctime tells
    assert volcanoes.stat().st_size == before.st_size and volcanoes.stat().st_mtime_ns == before.st_mtime_ns
    assert not BM25Retriever.from_directory(corpus_copy, cache_dir=cache).from_cache
    assert build_count == [2] and "volcanoes.rst" in reads


def test_the_corpus_language_is_detected_once_and_kept_in_the_index_cache(corpus_copy, tmp_path, monkeypatch):
    from deepstep.bm25_index import BM25Index

    first = BM25Index.from_directory(corpus_copy, cache_dir=tmp_path / "cache")
    detected = first.language
    assert detected is not None and (first.cache_folder / "language.json").is_file()

    def no_langdetect(texts):
        raise AssertionError("langdetect ran again")

    monkeypatch.setattr(bm25_index, "detect_corpus_language", no_langdetect)
    assert BM25Index.from_directory(corpus_copy, cache_dir=tmp_path / "cache").language == detected
