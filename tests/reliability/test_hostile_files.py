"""Hostile files and folders around deepstep's inputs and outputs: exports onto devices, FIFOs and
symlinks, NaN scores in JSON, symlinks, special files and odd names in a corpus, damaged or huge
stores, content that makes parsing slow, files that change while indexed, and what a killed
process leaves behind. Each case ends in the right file content or one clear line, never a
traceback, and nothing outside the named files is touched."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest

import deepstep
from deepstep import api
from deepstep import tree as step_tree
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


def test_export_to_dev_stdout_reaches_the_pipe(stored_thread):
    result, env = stored_thread
    finished = deepstep_cli(env, "export", THREAD, "--md", "/dev/stdout")
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout == result.markdown


def test_export_to_dev_stdout_redirected_to_a_file_appends_nothing_lost(stored_thread, tmp_path):
    """/dev/stdout redirected to a file: the report lands in that very file (the shell's open file), not a replacement."""
    result, env = stored_thread
    redirected = tmp_path / "out.md"
    with redirected.open("w") as handle:
        finished = subprocess.run(
            cli_command("export", THREAD, "--md", "/dev/stdout"), env=env, stdout=handle, stderr=subprocess.PIPE, text=True, timeout=120
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
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
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
