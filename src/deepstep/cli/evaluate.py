"""``deepstep eval``: run a labelled question set under one or more settings and score the threads
(``deepstep.evaluation``), with ``deepstep batch``'s worker processes, display and re-run rules."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand

from deepstep.cli.common import app, fail, load_settings, stderr, stdout, user_errors

if TYPE_CHECKING:
    from deepstep.configuration import Settings
    from deepstep.records import BatchAction, BatchOutcome, BatchQuestion, EvalQuestion, EvalRun
    from deepstep.threads import RunResult

_MANY_VALUED = ("--compare", "--set")


def spread_values(args: Sequence[str], options: Sequence[str] = _MANY_VALUED) -> list[str]:
    """``--compare rollouts=0 rollouts=2`` as ``--compare rollouts=0 --compare rollouts=2`` (the issue's spelling;
    click gives an option one value per use): KEY=VALUE words right after such an option's value are its values too."""
    spread: list[str] = []
    current: str | None = None
    expecting_value = False
    for arg in args:
        if expecting_value:
            spread.append(arg)
            expecting_value = False
        elif arg in options:
            current, expecting_value = arg, True
            spread.append(arg)
        elif any(arg.startswith(option + "=") for option in options):
            current = arg.split("=", 1)[0]
            spread.append(arg)
        elif current is not None and "=" in arg and not arg.startswith("-"):
            spread.extend([current, arg])
        else:
            current = None
            spread.append(arg)
    return spread


class _SpreadValuesCommand(TyperCommand):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, spread_values(args))


@app.command(name="eval", cls=_SpreadValuesCommand)
def evaluate(
    file: Annotated[
        Path,
        typer.Argument(
            help='Questions, JSONL: {"question": ..., and optional labels: "pages" (documents, pages, phrases), "chunk_ids", '
            '"abstain": true (the corpus cannot answer it), "reference" (an answer)}.'
        ),
    ],
    settings_set: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="KEY=VALUE: a run-shaping setting for every run, e.g. --set top_k=6 (several allowed)."),
    ] = None,
    compare: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY=VALUE", help="KEY=VALUE: run the whole set once per value, e.g. --compare rollouts=0 rollouts=2 (one run without it)."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for eval.json, eval.md, eval.png and eval.html (default: HOME/evals/FILE_STEM).")] = None,
    workers: Annotated[
        int, typer.Option("--workers", "-w", help="Worker processes running questions at once (1: wall times measured one question at a time).")
    ] = 1,
) -> None:
    """Score settings on your corpus: retrieval recall@k and MRR, supported claims, abstention, MCTSr gain, valid citations,
    calls, tokens, cost and wall time, per question and per run; a re-run reuses finished threads without a model call."""
    from deepstep import batch as batching
    from deepstep import evaluation
    from deepstep.cli.batch import _BatchDisplay, _embedded_model, _plan_line, _prepared
    from deepstep.corpus_fetch import default_corpus_dir

    with user_errors():
        if not 1 <= workers <= batching.MAX_WORKERS:
            fail(f"--workers must be 1 to {batching.MAX_WORKERS}, not {workers}")
        common = dict(evaluation.parse_setting(word, "--set") for word in settings_set or [])
        compared = [dict([evaluation.parse_setting(word, "--compare")]) for word in compare or []] or [{}]
        base = load_settings()
        if base.corpus is None and "corpus" not in common:  # pinned now, so the thread ids name the corpus searched
            base = evaluation.run_settings(base, {"corpus": str(default_corpus_dir(base.home))}, "the default corpus")
        questions = _read_questions(file)
        runs = _planned_runs(questions, common, compared, base)
        rows = [row for run in runs for row in run.rows]
        prepared = [_prepared(row, base, file) for row in rows]  # every run checked (corpus indexed, server named) before any call
        actions = [batching.plan_action(stored) for _, stored in prepared]
        counts = _plan_line(actions).split(": ", 1)[1]  # "6 to run, ...": each question x run is a thread
        stderr.print(f"{len(runs)} run{'s' * (len(runs) != 1)} of {len(questions)} question{'s' * (len(questions) != 1)}: {counts}", highlight=False)
        tasks = [
            batching.WorkerTask(i, row, settings) for i, (row, (settings, _)) in enumerate(zip(rows, prepared, strict=True)) if actions[i] != "skip"
        ]
        folder = out or base.home / "evals" / file.stem
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            fail(f"cannot create the output folder {folder}: {error.strerror or error}; pass a writable --out DIR")
        earlier = _earlier_wall_seconds(folder / "eval.json")
        started = time.monotonic()
        with _embedded_model(base, bool(tasks)), _BatchDisplay(rows, actions, min(workers, max(1, len(tasks)))) as display:
            results = batching.run_workers(tasks, workers, display.on_event)
        scored = _scored_runs(runs, questions, actions, results.outcomes, results.interrupted, earlier, base)
        _write_outputs(scored, folder, file)
        stdout.print(evaluation.ablation_table(scored), highlight=False, markup=False, soft_wrap=True)
        stderr.print(
            f"{sum(len(run.rows) for run in runs)} threads in {time.monotonic() - started:.1f} s; summary: {folder / 'eval.md'}", highlight=False
        )
        statuses = [question["status"] for run in scored for question in run["questions"]]
        if results.interrupted:
            fail("interrupted: run the same `deepstep eval` command again to continue", code=130)
        raise typer.Exit(0 if all(status == "done" for status in statuses) else 1)


@dataclass(frozen=True)
class _Run:
    """One --compare value: its name, its settings and one row per question, naming the question's thread."""

    name: str
    settings: Settings
    rows: list[BatchQuestion]


def _planned_runs(questions: list[EvalQuestion], common: dict[str, object], compared: list[dict[str, object]], base: Settings) -> list[_Run]:
    """A run per --compare value (one without), each question's thread id a hash of it and every run-shaping
    setting, so a re-run finds its threads and no thread serves two settings."""
    from deepstep import evaluation
    from deepstep.batch import default_thread_id
    from deepstep.errors import InputError

    runs: list[_Run] = []
    for changes in compared:
        name = evaluation.run_name(changes or common)  # without --compare, the run is what --set made it
        merged = {**common, **changes}
        settings = evaluation.run_settings(base, merged, f"--compare {name}" if changes else "--set")
        same = next((run for run in runs if run.settings.run_settings() == settings.run_settings()), None)
        if same is not None:  # they would share their threads: one run scored twice
            raise InputError(f"--compare {same.name} and {name} give the same settings: give each run different ones")
        id_settings = {key: value for key, value in settings.run_settings().items() if key != "review"}
        rows: list[BatchQuestion] = [
            {
                "line": q["line"],
                "question": q["question"],
                "thread_id": default_thread_id(q["question"], None, id_settings),
                "corpus": None,
                "settings": merged,
            }
            for q in questions
        ]
        runs.append(_Run(name, settings, rows))
    return runs


def _read_questions(file: Path) -> list[EvalQuestion]:
    from deepstep import evaluation
    from deepstep.batch import read_question_file

    return evaluation.parse_questions(read_question_file(file, "evaluation"), str(file))


def _earlier_wall_seconds(path: Path) -> dict[str, float]:
    """Wall seconds per thread from an earlier eval.json in the same folder (a thread finished then makes no
    call now, so its time is the one measured then); an unreadable file counts nothing."""
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
        return {q["thread_id"]: float(q["wall_seconds"]) for run in runs for q in run["questions"] if q.get("wall_seconds") is not None}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return {}


def _scored_runs(
    runs: list[_Run],
    questions: list[EvalQuestion],
    actions: list[BatchAction],
    outcomes: dict[int, BatchOutcome],
    interrupted: bool,
    earlier: dict[str, float],
    base: Settings,
) -> list[EvalRun]:
    from deepstep import evaluation
    from deepstep.batch import final_status, question_settings
    from deepstep.errors import UnknownThreadError
    from deepstep.threads import load

    scored: list[EvalRun] = []
    index = 0
    for run in runs:
        scores = []
        for question, row in zip(questions, run.rows, strict=True):
            settings = question_settings(row, base)
            try:
                stored: RunResult | None = load(row["thread_id"], settings=settings)
            except UnknownThreadError:
                stored = None
            outcome = outcomes.get(index)
            wall = earlier.get(row["thread_id"]) if actions[index] in ("skip", "resume", "retry") else None
            if outcome is not None:
                wall = (wall or 0.0) + outcome["wall_seconds"]
            scores.append(
                evaluation.question_scores(
                    question,
                    row["thread_id"],
                    final_status(stored, outcome, interrupted=interrupted),
                    stored,
                    k=settings.top_k,
                    cost=settings.estimate_cost(stored.usage) if stored is not None and settings.prices else None,
                    wall_seconds=wall,
                )
            )
            index += 1
        settings_json = {key: value for key, value in run.settings.run_settings().items() if key != "review"}
        scored.append({"name": run.name, "settings": settings_json, "overall": evaluation.overall_scores(scores), "questions": scores})
    return scored


def _write_outputs(runs: list[EvalRun], folder: Path, file: Path) -> None:
    from deepstep.atomic_files import write_text_atomically
    from deepstep.evaluation import summary_markdown

    try:
        write_text_atomically(folder / "eval.json", json.dumps({"runs": runs}, indent=2, ensure_ascii=False) + "\n")
        plot = _write_plot(runs, folder / "eval.png")
        markdown = summary_markdown(runs, source=str(file), plot=plot)
        write_text_atomically(folder / "eval.md", markdown)
        write_text_atomically(folder / "eval.html", _html(markdown, folder / plot if plot else None))
    except OSError as error:
        fail(f"cannot write the evaluation to {folder} ({error.strerror or error}); the threads are saved: run it again with a writable --out DIR")


def _html(markdown: str, plot: Path | None) -> str:
    """``eval.md`` as one self-contained HTML page: the plot inlined as a data URL (the report pages' security
    policy loads nothing from elsewhere, and a page that travels alone keeps its picture)."""
    import base64
    import html

    from deepstep.evaluation import PLOT_ALT
    from deepstep.report_formats import markdown_to_html

    if plot is None:
        return markdown_to_html(markdown, title="Evaluation")
    marker = "EVALUATION-PLOT-" + base64.b32encode(plot.name.encode()).decode().strip("=")
    page = markdown_to_html(markdown.replace(f"![{PLOT_ALT}]({plot.name})", marker), title="Evaluation")
    data = base64.b64encode(plot.read_bytes()).decode("ascii")
    return page.replace(f"<p>{marker}</p>", f'<p><img alt="{html.escape(PLOT_ALT)}" src="data:image/png;base64,{data}" style="max-width:100%"></p>')


def _write_plot(runs: list[EvalRun], path: Path) -> str | None:
    """Bars per metric (one small chart each: their scales differ), one bar per run; the file name, or None
    without matplotlib (the table is written all the same)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: write the file only
        import matplotlib.pyplot as plt
    except ImportError:
        stderr.print("[yellow]warning:[/] eval.png not written: install matplotlib (pip install 'deepstep\\[notebooks]')", highlight=False)
        return None
    from deepstep.evaluation import SHARE_METRICS, TABLE_METRICS, format_value

    metrics = [(key, label) for key, label in TABLE_METRICS if any(run["overall"][key] is not None for run in runs)]  # type: ignore[literal-required]
    columns = 4
    rows = max(1, -(-len(metrics) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    names = [run["name"] for run in runs]
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for position, axis in enumerate(axes.flat):
        if position >= len(metrics):
            axis.set_visible(False)
            continue
        key, label = metrics[position]
        values: list[Any] = [run["overall"][key] for run in runs]  # type: ignore[literal-required]
        bars = axis.bar(range(len(runs)), [value if value is not None else 0 for value in values], color=colours)
        axis.bar_label(bars, labels=[format_value(value) for value in values], fontsize=7)
        axis.set_title(label, fontsize=9)
        axis.set_xticks(range(len(runs)), names, fontsize=7, rotation=15)
        axis.tick_params(axis="y", labelsize=7)
        if key in SHARE_METRICS:
            axis.set_ylim(0, 1.15)  # a share: the whole scale, so 0.7 against 0.8 does not look like a landslide
        else:
            axis.margins(y=0.2)
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
    return path.name
