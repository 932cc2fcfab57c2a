"""Hostile files and folders around deepstep's inputs and outputs: exports onto devices, FIFOs and
symlinks, NaN scores in JSON, symlinks, special files and odd names in a corpus, damaged or huge
stores, content that makes parsing slow, files that change while indexed, and what a killed
process leaves behind. Each case ends in the right file content or one clear line, never a
traceback, and nothing outside the named files is touched."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest

import deepstep
from deepstep import api, step_tree
from deepstep.testing.crash import cli_command, cli_env

from .conftest import CORPUS, QUESTION, settings_for

pytestmark = pytest.mark.slow
THREAD = "kept"


@pytest.fixture
def stored_thread(fake_llm, tmp_path):
    """A home holding one finished thread, and the CLI environment pointing at it."""
    home = tmp_path / "home"
    result = deepstep.run(QUESTION, thread_id=THREAD, settings=settings_for(fake_llm.base_url, home, max_steps=2))
    return result, cli_env(fake_llm.base_url, home, corpus=CORPUS, max_steps=2)


def deepstep_cli(env: dict[str, str], *args: str, **options) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_command(*args), env=env, capture_output=True, text=True, timeout=120, **options)


def one_line_error(finished: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert finished.returncode == code, finished.stderr
    assert "Traceback" not in finished.stderr
    return finished.stderr


# --- item 2 and 19: exports and graph pictures onto devices, FIFOs, symlinks and unwritable places ---


@pytest.fixture
def null_device(tmp_path) -> Path:
    """A private copy of /dev/null (same major/minor): a broken export must not break the machine's own."""
    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.stat("/dev/null").st_rdev)
    except PermissionError:
        pytest.skip("creating a device node needs root (a non-root rename over /dev/null fails anyway)")
    return device


def test_export_to_a_character_device_leaves_it_a_device(stored_thread, null_device):
    _, env = stored_thread
    before = null_device.stat()
    finished = deepstep_cli(env, "export", THREAD, "--csv", str(null_device), "--md", str(null_device), "--parquet", str(null_device))
    assert finished.returncode == 0, finished.stderr
    after = null_device.stat()
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino
    assert not list(null_device.parent.glob("*.tmp"))


@pytest.fixture
def stdout_link(tmp_path) -> Path:
    """A private ``/dev/stdout``: the same link into /proc. A regression run as root must not replace
    the machine's own /dev/stdout with a file (it did once, while this test was checked against the old code)."""
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    return link


def test_export_to_dev_stdout_reaches_the_pipe(stored_thread, stdout_link):
    result, env = stored_thread
    finished = deepstep_cli(env, "export", THREAD, "--md", str(stdout_link))
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout == result.markdown


def test_export_to_dev_stdout_redirected_to_a_file_appends_nothing_lost(stored_thread, tmp_path, stdout_link):
    """/dev/stdout redirected to a file: the report lands in that very file (the shell's open file), not a replacement."""
    result, env = stored_thread
    redirected = tmp_path / "out.md"
    with redirected.open("w") as handle:
        finished = subprocess.run(
            cli_command("export", THREAD, "--md", str(stdout_link)), env=env, stdout=handle, stderr=subprocess.PIPE, text=True, timeout=120
        )
        inode = os.fstat(handle.fileno()).st_ino
    assert finished.returncode == 0, finished.stderr
    assert redirected.stat().st_ino == inode
    assert redirected.read_text(encoding="utf-8") == result.markdown


def test_export_to_a_fifo_is_written_straight(stored_thread, tmp_path):
    result, env = stored_thread
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)  # never blocks pytest's exit
    reader.start()
    finished = deepstep_cli(env, "export", THREAD, "--md", str(fifo))
    reader.join(timeout=60)
    assert finished.returncode == 0, finished.stderr
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert received == [result.markdown.encode("utf-8")]


@pytest.mark.parametrize("option", ["--md", "--csv", "--parquet", "--dreamsboard"])
def test_export_through_a_symlink_updates_its_target_and_keeps_the_link(stored_thread, tmp_path, option):
    _, env = stored_thread
    real = tmp_path / "real"
    link = tmp_path / "link"
    if option == "--dreamsboard":  # a directory option: the link inside the store folder is the file
        (tmp_path / "store").mkdir()
        real.write_text("old", encoding="utf-8")
        link = tmp_path / "store" / "task_step_store.json"
        link.symlink_to(real)
        target = tmp_path / "store"
    else:
        real.write_text("old", encoding="utf-8")
        link.symlink_to(real)
        target = link
    finished = deepstep_cli(env, "export", THREAD, option, str(target))
    assert finished.returncode == 0, finished.stderr
    assert link.is_symlink() and link.resolve() == real
    assert real.read_bytes() != b"old" and real.stat().st_size > 100
    assert not list(tmp_path.rglob("*.tmp"))


def test_export_onto_a_directory_or_socket_is_one_line(stored_thread, tmp_path):
    import socket

    _, env = stored_thread
    folder = tmp_path / "a-folder"
    folder.mkdir()
    finished = deepstep_cli(env, "export", THREAD, "--md", str(folder))
    assert "cannot write" in one_line_error(finished) and folder.is_dir()
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(tmp_path / "sock"))
    try:
        finished = deepstep_cli(env, "export", THREAD, "--csv", str(tmp_path / "sock"))
        assert "not a regular file" in one_line_error(finished)
        assert stat.S_ISSOCK((tmp_path / "sock").lstat().st_mode)
    finally:
        listening.close()


@pytest.mark.parametrize("format", ["png", "mermaid"])
def test_graph_out_through_a_symlink_and_to_a_device(tmp_path, null_device, format):
    env = cli_env("http://127.0.0.1:9/v1", tmp_path / "home")
    real = tmp_path / "real"
    real.write_text("old", encoding="utf-8")
    (tmp_path / "link").symlink_to(real)
    finished = deepstep_cli(env, "graph", "--format", format, "--out", str(tmp_path / "link"))
    assert finished.returncode == 0, finished.stderr
    assert (tmp_path / "link").is_symlink() and real.read_bytes() != b"old"
    if format == "png":
        assert real.read_bytes().startswith(b"\x89PNG")
    before = null_device.stat()
    finished = deepstep_cli(env, "graph", "--format", format, "--out", str(null_device))
    assert finished.returncode == 0, finished.stderr
    assert stat.S_ISCHR(null_device.stat().st_mode) and null_device.stat().st_ino == before.st_ino
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("format", ["png", "mermaid"])
def test_graph_out_to_an_unwritable_place_is_one_line(tmp_path, format):
    env = cli_env("http://127.0.0.1:9/v1", tmp_path / "home")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    finished = deepstep_cli(env, "graph", "--format", format, "--out", str(blocker / "graph.png"))
    assert "cannot write" in one_line_error(finished)
    assert blocker.read_text(encoding="utf-8") == "not a folder"


# --- item 24: NaN and infinite scores are written as JSON null ---


def strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_scores_are_written_as_valid_json(stored_thread, fake_llm, tmp_path):
    """A thread whose passages carry NaN and infinite scores (an API-built tree, a checkpoint from
    before scores were checked): every JSON deepstep writes parses with a strict parser."""
    result, env = stored_thread
    tree = result.tree.copy()
    done = [step for step in step_tree.steps(tree) if step["contexts"]]
    tree.nodes[done[0]["id"]]["contexts"] = [{**done[0]["contexts"][0], "score": float("nan")}, {**done[0]["contexts"][0], "score": float("inf")}]
    api.run_tree(tree, thread_id="nan-scores", settings=settings_for(fake_llm.base_url, tmp_path / "home", max_steps=2))

    shown = deepstep_cli(env, "show", "nan-scores", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    scores = [context["score"] for node in strict_json(shown.stdout)["tree"]["nodes"] for context in node.get("contexts") or []]
    assert scores.count(None) == 2
    exported = deepstep_cli(env, "export", "nan-scores", "--dreamsboard", str(tmp_path / "store"), "--csv", str(tmp_path / "table.csv"))
    assert exported.returncode == 0, exported.stderr
    store = strict_json((tmp_path / "store" / "task_step_store.json").read_text(encoding="utf-8"))
    assert [c["score"] for entry in store["task_step_store/data"].values() for c in entry["__data__"]["task_step_question_context"]].count(None) == 2
    import pandas as pd

    cells = pd.read_csv(tmp_path / "table.csv")["task_step_question_context"].dropna()
    assert sum(context["score"] is None for cell in cells for context in strict_json(cell)) == 2


# --- items 6, 13, 14, 15: hostile corpus folders ---


def corpus_with(tmp_path: Path, **files: str | bytes) -> Path:
    """A corpus folder: the test corpus plus ``files`` (relative path -> content)."""
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)
    for name, content in files.items():
        path = corpus / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return corpus


def corpus_index(tmp_path: Path, corpus: Path, **run_options) -> str:
    finished = subprocess.run(
        cli_command("corpus", "index", str(corpus)),
        env=cli_env("http://127.0.0.1:9/v1", tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=280,
        **run_options,
    )
    assert finished.returncode == 0 and "Traceback" not in finished.stderr, finished.stderr
    return finished.stdout


def search_hits(tmp_path: Path, corpus: Path, query: str) -> list[dict]:
    env = cli_env("http://127.0.0.1:9/v1", tmp_path / "home")
    finished = subprocess.run(
        cli_command("corpus", "search", query, "--corpus", str(corpus), "--json"), env=env, capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 0 and "Traceback" not in finished.stderr, finished.stderr
    return strict_json(finished.stdout)


def test_links_leaving_the_corpus_and_special_files_are_skipped_and_counted(tmp_path):
    secret = tmp_path / "private" / "secret.md"
    secret.parent.mkdir()
    secret.write_text("# Notes\n\nThe launch password is zanzibarquokka, keep it private.\n", encoding="utf-8")
    corpus = corpus_with(tmp_path, **{"inside/real.md": "# Kept\n\nThe gradient of a quokkaloss is computed by backpropagation.\n"})
    (corpus / "secret.md").symlink_to(secret)
    (corpus / "linked-folder").symlink_to(secret.parent, target_is_directory=True)
    (corpus / "kmsg.md").symlink_to("/proc/kmsg")  # reading it as root blocks for ever
    (corpus / "inside-link.md").symlink_to(corpus / "inside" / "real.md")
    (corpus / "loop").symlink_to(corpus, target_is_directory=True)  # inside the root: followed once, no loop
    os.mkfifo(corpus / "pipe.md")  # opening it for reading blocks for ever
    described = corpus_index(tmp_path, corpus)
    assert "3 links leaving the corpus folder" in described and "1 not regular files" in described
    assert search_hits(tmp_path, corpus, "zanzibarquokka") == []
    assert {hit["source"] for hit in search_hits(tmp_path, corpus, "quokkaloss")} == {"inside/real.md", "inside-link.md"}


def test_non_utf8_file_names_are_indexed_searched_and_run(fake_llm, tmp_path):
    corpus = corpus_with(tmp_path)
    (corpus / os.fsdecode(b"caf\xe9-notes.md")).write_text("# Cafe\n\nThe espresso loss function weighs bitterness.\n", encoding="utf-8")
    (corpus / os.fsdecode(b"dir-\xff")).mkdir()
    (corpus / os.fsdecode(b"dir-\xff") / "inner.md").write_text("# Inner\n\nA ristretto loss function is shorter.\n", encoding="utf-8")
    assert "Traceback" not in corpus_index(tmp_path, corpus)
    assert [hit["source"] for hit in search_hits(tmp_path, corpus, "espresso bitterness")][:1] == ["caf\\xe9-notes.md"]
    assert [hit["source"] for hit in search_hits(tmp_path, corpus, "ristretto")][:1] == ["dir-\\xff/inner.md"]
    result = deepstep.run(
        "What is the espresso loss function?", settings=settings_for(fake_llm.base_url, tmp_path / "home", corpus=corpus, max_steps=2)
    )
    assert result.status == "done"
    assert any(context["source"] == "caf\\xe9-notes.md" for step in step_tree.steps(result.tree) for context in step["contexts"])


def test_folders_nested_past_the_recursion_limit_are_indexed(tmp_path):
    corpus = corpus_with(tmp_path)
    folder = os.open(corpus, os.O_RDONLY)
    for _ in range(1200):  # one level at a time: Path.mkdir(parents=True) itself recurses
        os.mkdir("d", dir_fd=folder)
        folder, parent = os.open("d", os.O_RDONLY, dir_fd=folder), folder
        os.close(parent)
    bottom = os.open("bottom.md", os.O_WRONLY | os.O_CREAT, dir_fd=folder)
    os.write(bottom, b"# Bottom\n\nThe abyssal loss function lives at the bottom.\n")
    os.close(bottom)
    os.close(folder)
    try:
        corpus_index(tmp_path, corpus)
        assert [hit["source"] for hit in search_hits(tmp_path, corpus, "abyssal")] == ["d/" * 1200 + "bottom.md"]
    finally:  # pytest's own clean-up of old temporary folders recurses (RecursionError at this depth); rm does not
        subprocess.run(["rm", "-rf", str(corpus / "d")], check=False)


def test_a_damaged_fetch_record_is_fetched_again_not_a_traceback(tmp_path):
    home = tmp_path / "home"
    record = home / "corpora" / "sklearn" / ".fetched.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"version": "1.2", "pages": ', encoding="utf-8")
    env = {**cli_env("http://127.0.0.1:9/v1", home), "PATH": str(tmp_path / "no-tools")}  # no dpkg-deb: the fetch fails fast
    finished = subprocess.run(cli_command("corpus", "fetch", "sklearn"), env=env, capture_output=True, text=True, timeout=120)
    assert "dpkg-deb not found" in one_line_error(finished)


def test_unreadable_files_are_counted_as_permission_denied(tmp_path):
    """Root reads any file: as root the index runs without the capabilities that override file
    permissions (setpriv drops them from the bounding set), as any other user it runs as it is."""
    corpus = corpus_with(tmp_path, **{"locked.md": "# Locked\n\nThe sealed loss function is private.\n"})
    (corpus / "locked.md").chmod(0o000)
    (corpus / "locked-folder").mkdir(mode=0o000)
    command = cli_command("corpus", "index", str(corpus))
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("as root without setpriv (util-linux) every file is readable")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    finished = subprocess.run(command, env=cli_env("http://127.0.0.1:9/v1", tmp_path / "home"), capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0 and "Traceback" not in finished.stderr, finished.stderr
    assert "2 permission denied" in finished.stdout and "3 empty, binary or undecodable" in finished.stdout


def test_deeply_nested_and_huge_html_is_skipped_with_its_reason(tmp_path):
    nested = "<html><body>" + "<div>" * 20000 + "The matryoshka loss function." + "</div>" * 20000 + "</body></html>"
    huge = "<html><body>" + "<p>A matryoshka paragraph.</p>" * 160_000 + "</body></html>"  # 4.6 MB
    flat = "<html><body><p>A flat matryoshka page.</p></body></html>"
    corpus = corpus_with(tmp_path, **{"nested.html": nested, "huge.html": huge, "flat.html": flat})
    described = corpus_index(tmp_path, corpus)
    assert "1 HTML nested over 256 deep" in described and "1 HTML larger than 4 MB" in described
    assert [hit["source"] for hit in search_hits(tmp_path, corpus, "matryoshka")] == ["flat.html"]


def test_a_huge_markdown_heading_is_read_in_linear_time(tmp_path):
    """The old title pattern backtracked quadratically here (about an hour for this file): without
    the fix this test runs into pytest's timeout. No clock in the assertion."""
    heading = "# Spacious" + " " * 1_000_000 + "heading #\n\nThe roomy loss function has space.\n"
    corpus = corpus_with(tmp_path, **{"spacious.md": heading})
    corpus_index(tmp_path, corpus)
    hits = search_hits(tmp_path, corpus, "roomy")
    assert [hit["source"] for hit in hits] == ["spacious.md"]
    assert hits[0]["title"].startswith("Spacious") and hits[0]["title"].endswith("heading")


def test_the_index_cache_is_keyed_by_the_bytes_it_was_built_from(tmp_path):
    """An editor truncates a file while it is indexed (here: right before deepstep's second open of it,
    seen through Python's audit hook on ``open``); once the file is back, its passages must be searchable
    and not be hidden by an index cached under the complete file's key."""
    import sys

    from deepstep.bm25_index import BM25Index

    corpus = corpus_with(tmp_path, **{"edited.md": "# Edited\n\nThe palimpsest loss function is rewritten often.\n"})
    edited = corpus / "edited.md"
    content = edited.read_bytes()
    opens: list[str] = []
    watching = True

    def truncate_on_second_open(event: str, args: tuple) -> None:
        if watching and event == "open" and args and isinstance(args[0], str | bytes | os.PathLike) and os.fsdecode(args[0]) == str(edited):
            opens.append(event)
            if len(opens) == 2:
                edited.write_bytes(b"")  # mid-save: truncated, not yet rewritten

    sys.addaudithook(truncate_on_second_open)  # audit hooks cannot be removed: switched off below
    try:
        BM25Index.from_directory(corpus, cache_dir=tmp_path / "cache")
    finally:
        watching = False
    edited.write_bytes(content)  # the save completes with the same content
    again = BM25Index.from_directory(corpus, cache_dir=tmp_path / "cache")
    assert [passage.source for passage, _ in again.search("palimpsest", 4)] == ["edited.md"]
    # The first start hashed the complete file, then built from the truncated one: that index was saved under
    # the truncated bytes' key, so the complete file's key found no cache and the index was built again.
    assert len(opens) >= 2 and not again.from_cache


# --- item 16: hostile dreamsboard stores ---


@pytest.fixture
def exported_store(stored_thread, tmp_path) -> tuple[dict, dict[str, str]]:
    """The stored thread exported as a dreamsboard store (every step answered: importing it calls no model)."""
    _, env = stored_thread
    finished = deepstep_cli(env, "export", THREAD, "--dreamsboard", str(tmp_path / "exported"))
    assert finished.returncode == 0, finished.stderr
    return json.loads((tmp_path / "exported" / "task_step_store.json").read_text(encoding="utf-8")), env


def store_folder(tmp_path: Path, document: dict | str | bytes, name: str = "store") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    data = document if isinstance(document, bytes) else (document if isinstance(document, str) else json.dumps(document)).encode("utf-8")
    (folder / "task_step_store.json").write_bytes(data)
    return folder


def nested_json(depth: int) -> str:
    """An object nested ``depth`` levels deep, as text (json.dumps itself recurses)."""
    return '{"deeper": [' * depth + '"bottom"' + "]}" * depth


@pytest.mark.parametrize(
    ("collection", "value", "message"),
    [
        ("metadata", '["not", "an", "object"]', "'task_step_store/metadata' must be an object"),
        ("ref_task_step_info", '"text"', "'task_step_store/ref_task_step_info' must be an object"),
        ("metadata", nested_json(200), "more than 64 levels deep"),
        ("ref_task_step_info", nested_json(100_000), "nested too deeply"),
    ],
)
def test_a_store_with_bad_collections_is_refused_with_one_line(exported_store, tmp_path, collection, value, message):
    document, env = exported_store
    del document[f"task_step_store/{collection}"]
    folder = store_folder(tmp_path, json.dumps(document)[:-1] + f', "task_step_store/{collection}": {value}}}')
    finished = deepstep_cli(env, "import", str(folder), "--thread-id", "bad-store")
    assert message in one_line_error(finished)
    exported = deepstep_cli(env, "export", "bad-store", "--md", str(tmp_path / "report.md"))
    assert exported.returncode == 2 and "Traceback" not in exported.stderr  # nothing was imported


def test_a_store_with_a_byte_order_mark_imports_and_exports_again(exported_store, tmp_path):
    document, env = exported_store
    folder = store_folder(tmp_path, b"\xef\xbb\xbf" + json.dumps(document, ensure_ascii=False).encode("utf-8"))
    finished = deepstep_cli(env, "import", str(folder), "--thread-id", "with-bom", "--out", str(tmp_path / "out"))
    assert finished.returncode == 0, finished.stderr
    again = deepstep_cli(env, "export", "with-bom", "--dreamsboard", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    exported = strict_json((tmp_path / "again" / "task_step_store.json").read_text(encoding="utf-8"))
    assert exported["task_step_store/data"].keys() == document["task_step_store/data"].keys()


def test_an_unreadable_store_is_one_line(exported_store, tmp_path):
    document, env = exported_store
    folder = store_folder(tmp_path, document)
    (folder / "task_step_store.json").chmod(0o000)
    command = cli_command("import", str(folder), "--thread-id", "unreadable")
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("as root without setpriv (util-linux) every file is readable")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert "cannot read" in one_line_error(finished) and "Permission denied" in finished.stderr


def test_a_store_over_max_steps_is_refused_before_any_step_is_read(exported_store, fake_llm, tmp_path):
    document, env = exported_store
    template = next(iter(document["task_step_store/data"].values()))
    steps = {}
    for number in range(600):
        data = {**template["__data__"], "id_": f"step-{number}", "task_step_level": f"0>{number}", "task_step_question_answer": ""}
        steps[f"step-{number}"] = {**template, "__data__": data}
    folder = store_folder(tmp_path, {**document, "task_step_store/data": steps})
    fake_llm.reset_log()
    finished = deepstep_cli(env, "import", str(folder), "--thread-id", "too-many")
    assert "has 600 steps, more than deepstep runs (500)" in one_line_error(finished)
    answered = {key: {**entry, "__data__": {**entry["__data__"], "task_step_question_answer": "Answered."}} for key, entry in list(steps.items())[:5]}
    folder = store_folder(tmp_path, {**document, "task_step_store/data": {**answered, **dict(list(steps.items())[5:8])}}, "three-to-answer")
    finished = deepstep_cli(env, "import", str(folder), "--thread-id", "three-to-answer")  # the environment's max_steps is 2
    assert "has 3 unanswered steps, more than max_steps=2" in one_line_error(finished) and "DEEPSTEP_MAX_STEPS" in finished.stderr
    assert fake_llm.log() == []  # refused before the run: no model call


# --- item 25: what a SIGKILL leaves behind is cleaned by the next run ---

# Each snippet starts writing the way deepstep does, then the process SIGKILLs itself mid-write.
KILLED_MID_EXPORT = """
import os, signal, sys
from pathlib import Path
from deepstep.atomic_files import atomic_path
with atomic_path(Path(sys.argv[1])) as temp:
    temp.write_text("half a report")
    os.kill(os.getpid(), signal.SIGKILL)
"""
KILLED_MID_INDEX = """
import os, signal, sys
from pathlib import Path
from deepstep.atomic_files import staging_folder
from deepstep.bm25_index import _STAGING
(staging_folder(Path(sys.argv[1]), _STAGING) / "passages.sqlite3").write_text("half an index")
os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_while_running(snippet: str, *args: str) -> None:
    import sys

    finished = subprocess.run([sys.executable, "-c", snippet, *args], capture_output=True, text=True, timeout=120)
    assert finished.returncode == -9, finished.stderr


def test_temporary_files_of_a_killed_export_are_removed_by_the_next_one(stored_thread, tmp_path):
    result, env = stored_thread
    report = tmp_path / "report.md"
    killed_while_running(KILLED_MID_EXPORT, str(report))
    killed_while_running(KILLED_MID_EXPORT, str(report))  # removes the first one's file, leaves its own
    assert len(list(tmp_path.glob(".report.md.*.tmp"))) == 1 and not report.exists()
    alive = tmp_path / f".report.md.{os.getpid()}-inprogress.tmp"  # a live writer's file is left alone
    alive.write_text("still being written", encoding="utf-8")
    finished = deepstep_cli(env, "export", THREAD, "--md", str(report))
    assert finished.returncode == 0, finished.stderr
    assert list(tmp_path.glob(".report.md.*.tmp")) == [alive]
    assert report.read_text(encoding="utf-8") == result.markdown


def test_staging_folders_of_a_killed_index_are_removed_by_the_next_one(tmp_path):
    home = tmp_path / "home"
    corpus = corpus_with(tmp_path)
    corpus_index(tmp_path, corpus)  # the cache folder exists and holds this corpus' index
    cache = next(path.parent.parent for path in home.rglob("origin.json"))
    killed_while_running(KILLED_MID_INDEX, str(cache))
    assert len(list(cache.glob(".staging-*"))) == 1
    assert "reused the cached index" in corpus_index(tmp_path, corpus)
    assert list(cache.glob(".staging-*")) == []
