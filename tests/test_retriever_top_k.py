"""retrieval.top_contexts: every retriever a step searches, the configured corpus' or a caller's own,
gives it at most ``top_k`` passages."""

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from deepstep.configuration import Settings
from deepstep.retrieval import BM25Retriever, demo_corpus_dir, top_contexts

QUERY = "gradient descent learning rate"


class TenPassages(BaseRetriever):
    """A caller's own retriever that ignores top_k and always returns ten passages."""

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [Document(page_content=f"passage {i}", metadata={"ref_id": str(i), "score": 1.0 - i / 10}) for i in range(10)]


def test_a_callers_own_retriever_is_cut_to_top_k():
    found = top_contexts(QUERY, Settings.build(top_k=3), TenPassages())
    assert [context["ref_id"] for context in found] == ["0", "1", "2"]


def test_a_callers_own_bm25_index_searches_for_top_k_hits_without_being_changed():
    own = BM25Retriever.from_directory(demo_corpus_dir(), k=1)
    assert len(top_contexts(QUERY, Settings.build(top_k=3), own)) == 3
    assert own.k == 1


def test_the_configured_corpus_gives_top_k_passages(tmp_path):
    settings = Settings.build(home=tmp_path, corpus=demo_corpus_dir(), top_k=2)
    found = top_contexts(QUERY, settings)
    assert len(found) == 2
    assert all(context["source"] for context in found)
