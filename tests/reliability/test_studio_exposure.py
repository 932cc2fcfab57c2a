"""`deepstep studio` faces the browser: only Studio may drive it, and it trusts no file it did not write.

One real `deepstep studio` (and its `langgraph dev` child) runs for the module, started from a folder
outside any checkout, with no langgraph.json there, against the fake model server. Every request
goes to 127.0.0.1; the hostile ones only carry the headers a web page or a DNS-rebinding page would.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import free_port, running_studio

from deepstep.cli.studio import private_server_folder, served_config
from deepstep.configuration import Settings
from deepstep.errors import ConfigError
from deepstep.studio_http import STUDIO_CORS, STUDIO_ORIGINS
from deepstep.testing import FakeLLMServer
from deepstep.testing.crash import cli_command, cli_env

from .conftest import CORPUS, QUESTION

pytest.importorskip("langgraph_api", reason="the studio extra is not installed")
from langgraph_sdk import get_sync_client  # noqa: E402

READY_TIMEOUT = 180
FOREIGN_ORIGIN = "https://attacker.example"
# Where langgraph dev's in-memory runtime keeps (and at start-up unpickles) its state.
RUNTIME_FILES = (".langgraph_ops.pckl", ".langgraph_checkpoint.1.pckl", "store.pckl", ".langgraph_retry_counter.pckl")


class WritesMarker:
    """A pickle that, when loaded, creates the file ``marker`` (what a planted .pckl could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant_pickles(folder: Path, marker: Path) -> None:
    store = folder / ".langgraph_api"
    store.mkdir(parents=True)
    for name in RUNTIME_FILES:
        (store / name).write_bytes(pickle.dumps(WritesMarker(marker)))


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """`deepstep studio` run from a plain folder (no checkout, no langgraph.json), with crafted
    runtime pickles planted beside the config it generates and in the folder it starts from."""
    root = tmp_path_factory.mktemp("exposure")
    outside, home = root / "outside", root / "home"
    outside.mkdir()
    plant_pickles(home / "studio", root / "marker-beside-config")
    plant_pickles(outside, root / "marker-in-start-folder")
    port, log_path = free_port(), root / "studio.log"
    with FakeLLMServer() as fake:
        env = cli_env(fake.base_url, home, corpus=CORPUS, rollouts=1, max_retries=0)
        env = {k: v for k, v in env.items() if not k.startswith(("LANGSMITH_", "LANGCHAIN_"))}
        with running_studio(cli_command("studio", "--port", str(port)), env=env, cwd=outside, log_path=log_path, ready_timeout=READY_TIMEOUT):
            yield {"url": f"http://127.0.0.1:{port}", "port": port, "root": root, "home": home, "fake": fake, "log": log_path}


def thread_count(url: str) -> int:
    return len(get_sync_client(url=url).threads.search(limit=1000))


@pytest.mark.slow
def test_studio_starts_outside_a_checkout_and_runs_the_graph(studio):
    """Item 21: the generated langgraph.json has dependencies, so `langgraph dev` starts and serves the graph."""
    assert not (studio["root"] / "outside" / "langgraph.json").exists()
    assert (studio["home"] / "studio" / "langgraph.json").is_file()
    client = get_sync_client(url=studio["url"])
    (assistant,) = client.assistants.search(graph_id="deepstep")
    thread_id = client.threads.create()["thread_id"]
    result = client.runs.wait(thread_id, assistant["assistant_id"], input={"question": QUESTION}, context={"max_steps": 1})
    assert f"# {QUESTION}" in result["report"]


@pytest.mark.slow
def test_a_foreign_origin_gets_no_cors_grant_and_cannot_start_anything(studio):
    """Item 3: a web page's preflight gets neither a CORS nor a private-network grant, and a request
    that needs no preflight (a "simple" POST) is refused before it creates anything."""
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Private-Network": "true"}
    foreign = httpx.options(f"{studio['url']}/threads", headers={"Origin": FOREIGN_ORIGIN, **preflight})
    assert foreign.status_code == 403
    assert "access-control-allow-origin" not in foreign.headers
    assert "access-control-allow-private-network" not in foreign.headers

    before = thread_count(studio["url"])
    simple_post = httpx.post(f"{studio['url']}/threads", content=b"{}", headers={"Origin": FOREIGN_ORIGIN, "Content-Type": "text/plain"})
    assert simple_post.status_code == 403 and "access-control-allow-origin" not in simple_post.headers
    assert thread_count(studio["url"]) == before

    for origin in STUDIO_ORIGINS:  # Studio itself keeps working, with a grant for its origin only
        granted = httpx.options(f"{studio['url']}/threads", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        assert granted.status_code == 200 and granted.headers["access-control-allow-origin"] == origin
        private_network = httpx.options(f"{studio['url']}/threads", headers={"Origin": origin, **preflight})
        assert private_network.headers["access-control-allow-origin"] == origin
        assert private_network.headers["access-control-allow-private-network"] == "true"
    same_origin = httpx.get(f"{studio['url']}/ok", headers={"Origin": studio["url"]})
    assert same_origin.status_code == 200  # the server's own pages (/docs) call it with its own origin


@pytest.mark.slow
def test_a_foreign_host_header_is_refused(studio):
    """Item 3: a DNS-rebinding page reaches 127.0.0.1 under its own name; the server refuses that Host."""
    before = thread_count(studio["url"])
    for host in (f"attacker.example:{studio['port']}", "attacker.example", f"127.0.0.1.attacker.example:{studio['port']}"):
        assert httpx.get(f"{studio['url']}/ok", headers={"Host": host}).status_code == 400
        assert httpx.post(f"{studio['url']}/threads", json={}, headers={"Host": host}).status_code == 400
    assert thread_count(studio["url"]) == before
    assert httpx.get(f"{studio['url']}/ok", headers={"Host": f"localhost:{studio['port']}"}).status_code == 200


@pytest.mark.slow
def test_a_remote_run_cannot_point_the_graph_at_files_or_servers(studio, tmp_path):
    """Item 3: a run's context or configurable cannot name a corpus folder (a private notes file was read and
    sent to the model), nor HOME, a model server or a module to start; the run fails before any model call."""
    notes = tmp_path / "private"
    notes.mkdir()
    (notes / "notes.md").write_text("# Notes\n\nThe vault passphrase is PLUGH-4711.\n", encoding="utf-8")
    client = get_sync_client(url=studio["url"])
    (assistant,) = client.assistants.search(graph_id="deepstep")
    attempts = [
        {"context": {"corpus": str(notes), "max_steps": 1}},
        {"config": {"configurable": {"corpus": str(notes)}}},
        {"config": {"configurable": {"home": str(tmp_path / "home")}}},
        {"config": {"configurable": {"base_url": "http://127.0.0.1:9/v1"}}},
        {"config": {"configurable": {"roles": {"answer": {"base_url": "http://127.0.0.1:9/v1"}}}}},
        {"config": {"configurable": {"llama_server_module": "http.server"}}},
    ]
    calls_before = len(studio["fake"].log())
    for attempt in attempts:
        thread_id = client.threads.create()["thread_id"]
        parts = list(client.runs.stream(thread_id, assistant["assistant_id"], input={"question": QUESTION}, stream_mode="values", **attempt))
        errors = [part.data for part in parts if part.event == "error"]
        assert [error["error"] for error in errors] == ["ConfigError"], (attempt, [part.event for part in parts])
        assert client.threads.get(thread_id)["status"] == "error"
    assert len(studio["fake"].log()) == calls_before  # no prompt left the server
    # The API shows Studio the error's type only; the reason and what to do are in the server's output.
    output = studio["log"].read_text(errors="replace")
    for name in ("corpus", "home", "base_url", "roles", "llama_server_module"):
        assert f"cannot set {name}: set DEEPSTEP_{name.upper()} in the server's environment" in output
    assert not (tmp_path / "home").exists()


def test_run_settings_from_a_langgraph_server_are_limited_to_run_shaping_ones(monkeypatch, tmp_path):
    """The rule behind the test above, for every setting: in a LangGraph API server process only the
    RunContext fields come from the caller; `corpus` too once the server's user opts in."""
    monkeypatch.setenv("LANGSERVE_GRAPHS", '{"deepstep": "deepstep.graph:graph"}')
    for name in set(Settings.model_fields) - {"corpus"}:
        monkeypatch.delenv(f"DEEPSTEP_{name.upper()}", raising=False)
    shaping = Settings.for_run({"configurable": {"max_steps": 2, "review": True, "thread_id": "t", "corpus": None}})
    assert shaping.max_steps == 2 and shaping.review is True
    for name, value in [("corpus", str(tmp_path)), ("home", str(tmp_path)), ("checkpoint_path", str(tmp_path / "c.sqlite")),
                        ("base_url", "http://127.0.0.1:9/v1"), ("api_key_env", "HOME"), ("allow_remote_paths", True),
                        ("database_url", "postgresql://u@127.0.0.1/db"), ("llama_server_module", "http.server"),
                        ("roles", {"answer": {"base_url": "http://127.0.0.1:9/v1"}})]:  # fmt: skip
        with pytest.raises(ConfigError, match=f"cannot set {name}"):
            Settings.for_run({"configurable": {name: value}})
    monkeypatch.setenv("DEEPSTEP_ALLOW_REMOTE_PATHS", "true")
    assert Settings.for_run({"configurable": {"corpus": str(tmp_path)}}).corpus == tmp_path
    with pytest.raises(ConfigError, match="cannot set home"):
        Settings.for_run({"configurable": {"home": str(tmp_path)}})
    monkeypatch.delenv("LANGSERVE_GRAPHS")  # in-process callers (the API, tests) still set everything
    assert Settings.for_run({"configurable": {"home": str(tmp_path)}}).home == tmp_path


@pytest.mark.slow
def test_crafted_runtime_pickles_are_not_loaded(studio):
    """Item 5: `.langgraph_api/*.pckl` files planted beside the config or in the start folder are never
    unpickled: the server keeps its state in HOME/studio/server, a folder only the user can write."""
    assert httpx.get(f"{studio['url']}/ok").status_code == 200  # the server is up: it read whatever it reads at start-up
    assert not (studio["root"] / "marker-beside-config").exists()
    assert not (studio["root"] / "marker-in-start-folder").exists()
    folder = studio["home"] / "studio" / "server"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.getuid()


def test_a_server_folder_others_can_write_to_is_refused(tmp_path):
    """Item 5: deepstep never runs the server in a folder someone else could have planted pickles in."""
    folder = private_server_folder(tmp_path / "home")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    folder.chmod(0o777)
    with pytest.raises(ConfigError, match="not a private folder"):
        private_server_folder(tmp_path / "home")
    folder.rmdir()
    folder.symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ConfigError, match="not a private folder"):
        private_server_folder(tmp_path / "home")


def test_the_served_config_points_back_to_the_config_folder_and_adds_the_guard(tmp_path):
    """The server runs in the private folder with a copy of the config: its relative paths still mean the
    config's folder, and the Host/Origin guard and Studio-only CORS are added when the config has none."""
    project = tmp_path / "project"
    project.mkdir()
    config = {"dependencies": [".", "pandas"], "graphs": {"mine": "./agent.py:graph", "deepstep": "deepstep.graph:graph"}, "env": ".env"}
    (project / "langgraph.json").write_text(json.dumps(config), encoding="utf-8")
    folder = private_server_folder(tmp_path / "home")
    served = json.loads(served_config(project / "langgraph.json", folder).read_text(encoding="utf-8"))
    assert served["dependencies"] == [str(project), "pandas"] and served["env"] == str(project / ".env")
    assert served["graphs"] == {"mine": str(project / "agent.py") + ":graph", "deepstep": "deepstep.graph:graph"}
    assert served["http"] == {"app": "deepstep.studio_http:app", "cors": STUDIO_CORS}
    repo = json.loads((Path(__file__).resolve().parents[2] / "langgraph.json").read_text(encoding="utf-8"))
    assert repo["http"] == served["http"]  # plain `langgraph dev` in the checkout gets the same guard


def test_the_cli_loads_the_http_guard_only_for_studio():
    """The guard needs Starlette (the studio extra): the other commands neither import it nor need it."""
    probe = "import sys; from deepstep.cli import app; print(sorted({'starlette', 'deepstep.studio_http'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120).stdout
    assert loaded.strip() == "[]"
