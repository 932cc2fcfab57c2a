"""BM25 retrieval: loading and chunking files, ranking, and the on-disk index cache."""

from __future__ import annotations

import hashlib
import itertools
import shutil
from pathlib import Path

import pytest

from deepstep import retrieval
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
    return retrieval._UNIT.findall(text)


@pytest.fixture(scope="module")
def demo() -> BM25Retriever:
    return BM25Retriever.from_directory(demo_corpus_dir())


@pytest.fixture
def corpus_copy(tmp_path) -> Path:
    return Path(shutil.copytree(TEST_CORPUS, tmp_path / "corpus"))


@pytest.fixture
def build_count(monkeypatch) -> list[int]:
    calls = [0]
    real = retrieval._build_index

    def counting(passages):
        calls[0] += 1
        return real(passages)

    monkeypatch.setattr(retrieval, "_build_index", counting)
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
    passages, _ = load_passages(tmp_path, chunk_words=100, overlap_words=20)
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
    passages, _ = load_passages(tmp_path, chunk_words=100, overlap_words=20)
    chunks = [words(p.text) for p in passages]
    assert [len(c) for c in chunks[:-1]] == [100] * (len(chunks) - 1)
    for previous, current in itertools.pairwise(chunks):
        assert current[:20] == previous[-20:]
    assert chunks[-1][-1] == "w499"


def test_long_list_is_split_at_line_ends(tmp_path):
    items = "\n".join(f"- item{i} " + " ".join(f"i{i}w{j}" for j in range(9)) for i in range(30))
    (tmp_path / "list.md").write_text(items, encoding="utf-8")
    passages, _ = load_passages(tmp_path, chunk_words=100, overlap_words=20)
    assert len(passages) > 1
    assert all(words(p.text)[-1].endswith("w8") for p in passages)


def test_cjk_characters_count_as_words(tmp_path):
    (tmp_path / "zh.md").write_text("损失函数" * 100, encoding="utf-8")
    passages, _ = load_passages(tmp_path, chunk_words=50, overlap_words=10)
    assert all(len(p.text) <= 50 for p in passages)
    assert len(passages) == 10  # 400 characters, step 40


def test_invalid_chunk_settings():
    with pytest.raises(ValueError):
        load_passages(TEST_CORPUS, chunk_words=10, overlap_words=10)


def test_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(CorpusError, match="does not exist: pass --corpus DIR"):
        load_passages(tmp_path / "nope")
    with pytest.raises(CorpusError, match="does not exist"):
        BM25Retriever.from_directory(tmp_path / "nope", cache_dir=tmp_path / "cache")


def test_folder_without_readable_files_says_what_to_do(tmp_path):
    (tmp_path / "empty.md").write_bytes(b"")
    (tmp_path / "blob.txt").write_bytes(b"\x00\x01")
    with pytest.raises(CorpusError, match=r"no readable \.md/\.txt/\.rst files.*--corpus"):
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
    assert again.passages == first.passages and again.k == 2 and again.skipped_files == 3
    assert again.invoke("lava") == first.invoke("lava")[:2]

    (corpus_copy / "tides.md").write_text("# Tides\n\nThe moon pulls the oceans into tides.", encoding="utf-8")
    changed = BM25Retriever.from_directory(corpus_copy, cache_dir=cache)
    assert build_count == [2]
    assert changed.invoke("moon tides")[0].metadata["source"] == "tides.md"


def test_chunk_settings_are_part_of_the_cache_key(corpus_copy, tmp_path, build_count):
    BM25Retriever.from_directory(corpus_copy, cache_dir=tmp_path / "cache")
    BM25Retriever.from_directory(corpus_copy, cache_dir=tmp_path / "cache", chunk_words=20, overlap_words=5)
    assert build_count == [2]


@pytest.mark.parametrize("damage", ["garbage_params", "missing_passages", "truncated_array"])
def test_corrupt_cache_is_rebuilt(corpus_copy, tmp_path, build_count, damage):
    cache = tmp_path / "cache"
    BM25Retriever.from_directory(corpus_copy, cache_dir=cache)
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    if damage == "garbage_params":
        (entry / "params.index.json").write_text("{not json", encoding="utf-8")
    elif damage == "missing_passages":
        (entry / "passages.json").unlink()
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
