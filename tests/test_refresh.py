"""Corpus refresh over real HTTP with the fake server: after a corpus edit, exactly the steps citing the edited
passage are researched again (their calls and no other), a dry run makes no call, and an unchanged corpus
refreshes nothing."""

from __future__ import annotations

import shutil
from collections import Counter

from typer.testing import CliRunner

import deepstep
from deepstep import step_tree
from deepstep.api import run_tree
from deepstep.cli import app
from deepstep.testing.crash import cli_env
from tests.conftest import TEST_CORPUS, calls_by_task, with_settings

# Steps named after the test corpus's topics: with top_k=1 each retrieves, and cites, a passage of its own.
QUESTION = "What is a loss function?"
STEP_NAMES = ("Volcanoes: lava, magma and the crust", "Photosynthesis: chlorophyll and sunlight in leaves", "Gradient descent and the learning rate")
# One step's calls with rollouts=1 (3 + 3R) and no follow-up search.
ONE_STEP = Counter(question=1, answer=1, evaluate=2, critique=1, refine=1)


def topic_corpus(folder):
    """The test corpus copied to ``folder``, each topic's passage also naming the question's terms, so the evidence
    gate lets every step answer (the fake model's research question is about the question, not the step)."""
    shutil.copytree(TEST_CORPUS, folder)
    for source in ("volcanoes.rst", "photosynthesis.txt"):
        with (folder / source).open("a", encoding="utf-8") as file:
            file.write("\nIn practice, a loss function could score a model of it.\n")
    return folder


def three_step_thread(thread_id, settings, corpus):
    """A finished 3-step thread over ``corpus`` (no planning calls: the plan is given)."""
    specs = [step_tree.StepSpec(name=name, description="", level=str(i)) for i, name in enumerate(STEP_NAMES)]
    tree = step_tree.build_tree(QUESTION, "", specs, max_steps=5, max_depth=3).tree
    run_settings = with_settings(settings, corpus=corpus, rollouts=1, top_k=1, max_searches=0)
    return run_tree(tree, thread_id=thread_id, settings=run_settings), run_settings


def cited_by_one_step(tree):
    """A (step, context) whose passage no other step cites."""
    cited = {s["id"]: [s["contexts"][0]] for s in step_tree.steps(tree) if "[1]" in s["answer"]}
    chunk_ids = Counter(c["chunk_id"] for contexts in cited.values() for c in contexts)
    step_id, contexts = next((step_id, contexts) for step_id, contexts in cited.items() if chunk_ids[contexts[0]["chunk_id"]] == 1)
    return step_tree.steps(tree)[step_tree.step_ids(tree).index(step_id)], contexts[0]


def edit_passage(corpus, source):
    path = corpus / source
    path.write_text(path.read_text(encoding="utf-8") + "\nThis sentence was added later.\n", encoding="utf-8")


def test_a_corpus_edit_recomputes_exactly_the_step_citing_the_edited_passage(settings, fake_llm, tmp_path):
    corpus = topic_corpus(tmp_path / "corpus")
    first, run_settings = three_step_thread("fresh1", settings, corpus)
    assert [s["status"] for s in step_tree.steps(first.tree)] == ["done"] * 3
    assert len({s["contexts"][0]["chunk_id"] for s in step_tree.steps(first.tree)}) == 3  # a passage each
    step, passage = cited_by_one_step(first.tree)
    edit_passage(corpus, passage["source"])
    fake_llm.reset_log()

    listed = deepstep.refresh("fresh1", dry_run=True, settings=run_settings)
    assert fake_llm.log() == []
    assert [(s["level"], s["reasons"]) for s in listed.stale] == [(step["level"], ["cited passage [1] changed"])]
    assert listed.checked == 3 and not listed.recomputed and listed.result.tree.nodes[step["id"]]["answer"] == step["answer"]

    refreshed = deepstep.refresh("fresh1", settings=run_settings)
    assert calls_by_task(fake_llm) == ONE_STEP
    assert refreshed.recomputed and refreshed.result.status == "done"
    before, after = {s["id"]: s for s in step_tree.steps(first.tree)}, {s["id"]: s for s in step_tree.steps(refreshed.result.tree)}
    for step_id in before.keys() - {step["id"]}:
        assert after[step_id] == before[step_id]  # untouched, to the last field
    assert after[step["id"]]["contexts"][0]["text"].endswith("This sentence was added later.")

    fake_llm.reset_log()
    again = deepstep.refresh("fresh1", settings=run_settings)
    assert fake_llm.log() == [] and again.stale == [] and again.checked == 3 and not again.recomputed


def test_a_new_file_that_a_step_now_retrieves_makes_that_step_out_of_date(settings, fake_llm, tmp_path):
    corpus = topic_corpus(tmp_path / "corpus")
    _, run_settings = three_step_thread("fresh2", settings, corpus)
    (corpus / "lava.md").write_text(
        "# Lava\n\nVolcanoes: lava and magma through the crust. In practice, a loss function scores lava models.\n", encoding="utf-8"
    )
    found = deepstep.refresh("fresh2", dry_run=True, settings=run_settings)
    assert [(s["name"], s["reasons"]) for s in found.stale] == [(STEP_NAMES[0], ["retrieval now returns 1 new passage"])]


def test_refreshing_against_another_folder_keeps_that_folder_for_the_thread(settings, fake_llm, tmp_path):
    original, moved = topic_corpus(tmp_path / "corpus"), tmp_path / "moved"
    first, run_settings = three_step_thread("fresh3", settings, original)
    shutil.copytree(original, moved)
    step, passage = cited_by_one_step(first.tree)
    edit_passage(moved, passage["source"])
    fake_llm.reset_log()
    refreshed = deepstep.refresh("fresh3", corpus=moved, settings=run_settings)
    assert calls_by_task(fake_llm) == ONE_STEP
    assert refreshed.result.tree.nodes[step["id"]]["contexts"][0]["text"].endswith("This sentence was added later.")
    shutil.rmtree(original)
    # Settings that name no corpus: the thread's own is used, now the moved folder (the original is gone).
    thread_settings = deepstep.Settings.build(**run_settings.model_dump(exclude={"corpus"}))
    fake_llm.reset_log()
    assert deepstep.refresh("fresh3", settings=thread_settings).stale == [] and fake_llm.log() == []
    deepstep.rerun_step("fresh3", step["level"], settings=thread_settings)
    assert calls_by_task(fake_llm) == ONE_STEP


def test_the_cli_lists_then_refreshes_and_says_when_all_steps_are_current(settings, fake_llm, tmp_path):
    corpus = topic_corpus(tmp_path / "corpus")
    first, _ = three_step_thread("fresh4", settings, corpus)
    step, passage = cited_by_one_step(first.tree)
    env = cli_env(fake_llm.base_url, settings.home, columns=200)
    runner = CliRunner()
    current = runner.invoke(app, ["refresh", "fresh4", "--dry-run"], env=env)
    assert current.exit_code == 0 and current.output == "all 3 steps are current\n"
    edit_passage(corpus, passage["source"])
    fake_llm.reset_log()
    listed = runner.invoke(app, ["refresh", "fresh4", "--dry-run"], env=env)
    assert listed.exit_code == 0, listed.output
    assert fake_llm.log() == []
    assert "1 of 3 steps out of date" in listed.output and "cited passage [1] changed" in listed.output and step["name"] in listed.output
    refreshed = runner.invoke(app, ["refresh", "fresh4", "--out", str(tmp_path / "out")], env=env)
    assert refreshed.exit_code == 0, refreshed.output
    assert calls_by_task(fake_llm) == ONE_STEP and (tmp_path / "out" / "report.md").is_file()
    unknown = runner.invoke(app, ["refresh", "nosuchthread"], env=env)
    assert unknown.exit_code == 2 and "no thread nosuchthread" in unknown.output


def test_a_current_thread_refreshed_against_another_folder_keeps_it_without_a_call(settings, fake_llm, tmp_path):
    original, copy = topic_corpus(tmp_path / "corpus"), tmp_path / "copy"
    first, run_settings = three_step_thread("fresh6", settings, original)
    shutil.copytree(original, copy)
    fake_llm.reset_log()
    same = deepstep.refresh("fresh6", corpus=copy, settings=run_settings)
    assert same.stale == [] and not same.recomputed and fake_llm.log() == []
    assert step_tree.trees_equal(same.result.tree, first.tree) and same.result.markdown == first.markdown
    shutil.rmtree(original)
    thread_settings = deepstep.Settings.build(**run_settings.model_dump(exclude={"corpus"}))
    assert deepstep.refresh("fresh6", dry_run=True, settings=thread_settings).checked == 3  # searches the copy
    assert [v["number"] for v in deepstep.versions("fresh6", settings=thread_settings)] == [1]  # no new report version
