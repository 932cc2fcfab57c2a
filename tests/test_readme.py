"""The README's examples work as written: its Python runs, its command lines name real options,
its Mermaid picture is the graph's."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from deepstep.cli import app

README = Path(__file__).parent.parent / "README.md"
TEST_CORPUS = Path(__file__).parent / "data" / "corpus"


def blocks(language: str) -> list[str]:
    """The contents of every ```language fenced block of the README, in order."""
    text = README.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.DOTALL | re.MULTILINE)


def test_python_blocks_run_as_written(fake_llm, monkeypatch, tmp_path):
    python = blocks("python")
    assert python, "the README has no ```python block"
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setenv("DEEPSTEP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DEEPSTEP_CORPUS", str(TEST_CORPUS))
    monkeypatch.setenv("DEEPSTEP_MAX_STEPS", "2")
    monkeypatch.setenv("DEEPSTEP_ROLLOUTS", "1")
    monkeypatch.chdir(tmp_path)  # relative paths in the examples (.deepstep/...) land here
    for number, code in enumerate(python, 1):
        exec(compile(code, f"README.md python block {number}", "exec"), {"__name__": f"readme_block_{number}"})
    assert fake_llm.log(), "the examples never called the model server"


def _command_lines() -> list[list[str]]:
    """Each ``deepstep ...`` line of the README's bash blocks as words, comments dropped."""
    lines = []
    for block in blocks("bash"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "deepstep":
                lines.append(words[1:])
    return lines


def _options(command: Any) -> set[str]:
    named = {name for param in command.params if not getattr(param, "hidden", False) for name in (*param.opts, *param.secondary_opts)}
    return named | {"--help"}  # click adds --help when it parses, not as a param


def command_and_options(words: list[str]) -> tuple[list[str], set[str], list[str]]:
    """For ``deepstep WORDS...``: the (sub)command path, the options that command takes, the words after it."""
    command = typer.main.get_command(app)
    path = ["deepstep"]
    rest = list(words)
    while hasattr(command, "commands"):  # a group (typer bundles its own click: no isinstance)
        assert rest, f"{' '.join(path)}: no subcommand named"
        sub = command.commands.get(rest[0])
        assert sub is not None, f"`{' '.join(path)} {rest[0]}` is not a command"
        path.append(rest.pop(0))
        command = sub
    return path, _options(command), rest


def named_options(text: str) -> set[str]:
    """The ``--option`` and ``-k`` names in a text (not the dashes inside words like ``non-empty``)."""
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))


def check_command_lines(lines: list[list[str]]) -> None:
    """Every line names a real (sub)command and only options that command has."""
    for words in lines:
        path, options, rest = command_and_options(words)
        unknown = named_options(" ".join(rest)) - options
        assert not unknown, f"`{' '.join(path)}` has no option {sorted(unknown)} (README line: deepstep {' '.join(words)})"


def test_bash_blocks_name_only_existing_commands_and_options():
    lines = _command_lines()
    assert len(lines) > 10, "expected the README's deepstep command lines"
    check_command_lines(lines)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("deepstep corpus index DIR [--corpus DIR]", "no option"),
        ("deepstep corpus search QUERY --top-k 4", "no option"),
        ("deepstep nonsense ID", "not a command"),
    ],
)
def test_the_command_line_check_catches_mistakes(line, problem):
    with pytest.raises(AssertionError, match=problem):
        check_command_lines([shlex.split(line)[1:]])


def test_mermaid_block_is_the_graph():
    from deepstep.graph import graph

    mermaid = blocks("mermaid")
    assert len(mermaid) == 1
    assert mermaid[0].strip() == graph.get_graph().draw_mermaid().strip()
