"""Fixtures for the browser suite: real Jupyter servers (JupyterLab 4 and Notebook 7), Chromium,
and an offline page.

Each server serves a temporary copy of ``notebooks/`` with its own Jupyter config, data, runtime,
settings and workspace folders, so a run never touches tracked notebooks or the user's Jupyter
state. Every page request that does not go to that server is aborted and recorded: llmscope
promises no CDN and no network, and the tests assert the page never tried.

A test runs in JupyterLab through the ``jupyter`` fixture; decorated with :data:`FRONTENDS` it
runs once in each front end (ids ``[lab]`` and ``[notebook7]``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import psutil
import pytest
from playwright.sync_api import Browser, Page, Route, WebSocketRoute, sync_playwright

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]
SERVER_START_S = 60.0
# Stops the "receive official Jupyter news?" pop-up, which would cover the notebook.
NOTIFICATIONS = {"fetchNews": "false", "checkForUpdates": False}


# The command line of each front end, and the URL that opens a notebook in it, already logged in
# (``reset``: a fresh Lab workspace, so no earlier test's tabs come back).
APPS = {
    "lab": (["-m", "jupyterlab", "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"], "/lab/tree/{name}?reset&token={token}"),
    "notebook7": (["-m", "notebook", "--JupyterNotebookApp.expose_app_in_browser=True"],
                  "/notebooks/{name}?token={token}"),
}
FRONTENDS = pytest.mark.parametrize("jupyter", list(APPS), indirect=True)


@dataclass(frozen=True)
class Jupyter:
    """A running Jupyter server on loopback, and the front end (a key of ``APPS``) it serves."""

    app: str
    host: str
    port: int
    token: str

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    def notebook_url(self, name: str) -> str:
        """The URL that opens ``name`` in this front end, already logged in."""
        return self.origin + APPS[self.app][1].format(name=name, token=self.token)

    def api(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10) -> Any:
        """Call the server's REST API (``path`` like ``/api/status``) and return the JSON reply."""
        request = urllib.request.Request(
            self.origin + path, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read() or b"null")

    def serves(self, url: str) -> bool:
        """Whether ``url`` (http or ws) points at this server."""
        parts = urlsplit(url)
        return parts.scheme in ("http", "ws") and parts.netloc == f"{self.host}:{self.port}"


def _free_port(host: str) -> int:
    """A port free right now; should another process take it first, --port-retries=0 says so."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _isolated_env(home: Path) -> dict[str, str]:
    """The environment of the server and its kernels: offline, with throwaway Jupyter folders."""
    dirs = {name: home / name.lower() for name in (
        "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR",
        "JUPYTERLAB_WORKSPACES_DIR", "IPYTHONDIR")}
    for d in dirs.values():
        d.mkdir()
    settings = dirs["JUPYTERLAB_SETTINGS_DIR"] / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps(NOTIFICATIONS))
    return {**os.environ, **{k: str(v) for k, v in dirs.items()}, "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}


def _wait_until_up(jupyter: Jupyter, server: subprocess.Popen, log: Path) -> None:
    """Poll ``/api/status`` until it answers; fail with the server's log if it does not."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"{jupyter.app} exited with code {server.returncode} before answering. Log:\n"
                        f"{log.read_text()}", pytrace=False)
        try:
            jupyter.api("GET", "/api/status", timeout=2)
            return
        except OSError:  # refused, reset, timed out, or an HTTP error while it starts
            time.sleep(0.2)
    pytest.fail(f"{jupyter.app} did not answer {jupyter.origin}/api/status within {SERVER_START_S:.0f} s. Log:\n"
                f"{log.read_text()}", pytrace=False)


def _stop(server: subprocess.Popen) -> None:
    """Stop the server, its process group and its kernels (each kernel has a session of its own)."""
    try:
        family = psutil.Process(server.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(server.pid, signal.SIGTERM)  # Jupyter shuts its kernels down on SIGTERM
        server.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait()
    for leftover in psutil.wait_procs(family, timeout=5)[1]:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()


@contextlib.contextmanager
def serve(app: str, home: Path) -> Iterator[Jupyter]:
    """Run the front end ``app`` on 127.0.0.1 over a copy of the repo's ``notebooks/`` in the
    empty folder ``home`` (which also holds its Jupyter folders and ``server.log``)."""
    root = home / "notebooks"
    shutil.copytree(REPO / "notebooks", root)
    jupyter = Jupyter(app=app, host="127.0.0.1", port=_free_port("127.0.0.1"), token=secrets.token_hex(24))
    log = home / "server.log"
    cmd = [sys.executable, *APPS[app][0], "--no-browser", f"--ip={jupyter.host}", f"--port={jupyter.port}",
           "--port-retries=0", f"--IdentityProvider.token={jupyter.token}", f"--ServerApp.root_dir={root}"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    with log.open("wb") as out:
        server = subprocess.Popen(cmd, cwd=root, env=_isolated_env(home), stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_up(jupyter, server, log)
        yield jupyter
    finally:
        _stop(server)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jupyter]:
    """JupyterLab 4, started once for the session."""
    with serve("lab", tmp_path_factory.mktemp("lab")) as jupyter:
        yield jupyter


@pytest.fixture(scope="session")
def notebook7(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jupyter]:
    """Notebook 7, started once for the session (only if a test asks for it)."""
    with serve("notebook7", tmp_path_factory.mktemp("notebook7")) as jupyter:
        yield jupyter


@pytest.fixture
def jupyter(request: pytest.FixtureRequest) -> Jupyter:
    """The server of this test: JupyterLab, or each front end under ``@FRONTENDS``."""
    return request.getfixturevalue(getattr(request, "param", "lab"))


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Chromium from the system package (Playwright's own download fails here)."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `apt-get install -y chromium chromium-driver`.", pytrace=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def offsite_requests() -> list[str]:
    """URLs the page tried to reach outside the Jupyter server (filled by ``page``)."""
    return []


@pytest.fixture
def page(browser: Browser, jupyter: Jupyter, offsite_requests: list[str],
         request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh page that may only talk to ``jupyter``; after the test a screenshot of it is saved
    and the server's kernels are shut down."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})

    def block(route: Route) -> None:
        offsite_requests.append(route.request.url)
        route.abort("blockedbyclient")

    def block_socket(ws: WebSocketRoute) -> None:
        offsite_requests.append(ws.url)
        ws.close()

    context.route(lambda url: not jupyter.serves(url), block)
    context.route_web_socket(lambda url: not jupyter.serves(url), block_socket)
    page = context.new_page()
    try:
        yield page
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / f"{request.node.name}.png")
        context.close()
        # each test's notebook has a kernel holding a model: shut it down, or they pile up
        for session in jupyter.api("GET", "/api/sessions"):
            jupyter.api("DELETE", f"/api/sessions/{session['id']}")
