"""Acting on a notebook in the page as a user does, the same way in JupyterLab and Notebook 7
(both expose ``window.jupyterapp`` and run the same notebook widget): write one, open it, run
every cell, read what each cell shows, restart or kill its kernel; show a widget beside what
its kernel saw, and save what the user saw."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

import nbformat
import psutil
from playwright.sync_api import Dialog, Locator, Page

from tests.browser.conftest import ARTIFACTS

if TYPE_CHECKING:
    from tests.browser.conftest import Jupyter

# Uncaught errors of a front end itself, on any page it loads, with or without a widget: Notebook
# 7.6.5 on JupyterLab 4.6.6 throws this from its keyboard-shortcuts plugin while settings load.
KNOWN_PAGE_ERRORS = {"lab": (), "notebook7": ("Cannot read properties of undefined (reading 'schema')",)}
RUN_TIMEOUT_MS = 120_000  # the quickstart's first cells load SmolLM2: 10-20 s on a 2-core CPU
KERNEL_TIMEOUT_MS = 60_000
RESTART_TIMEOUT_S = 60.0


class CellRun(TypedDict):
    """What a code cell shows after a run: its execution count and its errors."""

    count: int | None
    errors: list[str]


def put_notebook(jupyter: Jupyter, name: str, *cells: str) -> None:
    """Write a notebook of these code cells on the server, as ``name``."""
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(c) for c in cells],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    jupyter.api("PUT", f"/api/contents/{name}", {"type": "notebook", "format": "json", "content": notebook})


def open_notebook(page: Page, jupyter: Jupyter, name: str) -> None:
    """Open ``name`` and wait until its kernel is idle."""
    page.goto(jupyter.notebook_url(name))
    wait_for_idle_kernel(page, name)


def reopen_notebook(page: Page, jupyter: Jupyter, name: str) -> None:
    """Save the open notebook and load its page again (no "leave the page?" prompt), as a reload does."""
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=KERNEL_TIMEOUT_MS)
    open_notebook(page, jupyter, name)


def wait_for_idle_kernel(page: Page, name: str) -> None:
    """Wait until the notebook ``name`` is the current widget and its kernel is idle."""
    page.wait_for_function(
        """name => {
            const w = window.jupyterapp?.shell.currentWidget;
            return w?.context?.path === name && w.context.isReady
                && w.sessionContext.session?.kernel?.status === 'idle';
        }""", arg=name, timeout=KERNEL_TIMEOUT_MS)


def run_all(page: Page) -> list[CellRun]:
    """Run every cell as the Run All menu does; return what each code cell shows."""
    page.evaluate("""() => {
        window.__runAllDone = false;
        window.jupyterapp.commands.execute('notebook:run-all-cells')
            .finally(() => { window.__runAllDone = true; });
    }""")
    # The command settles when the last cell has run, or when a failing cell stops the run.
    page.wait_for_function("() => window.__runAllDone", timeout=RUN_TIMEOUT_MS)
    # Read errors from the model: the front end draws an error with the stderr renderer, so in
    # the page it looks like any warning (data-mime-type="application/vnd.jupyter.stderr").
    return page.evaluate("""() => window.jupyterapp.shell.currentWidget.content.widgets
        .filter(cell => cell.model.type === 'code')
        .map(cell => ({
            count: cell.model.executionCount,
            errors: cell.model.outputs.toJSON()
                .filter(out => out.output_type === 'error')
                .map(out => `${out.ename}: ${out.evalue}`),
        }))""")


def assert_ran_cleanly(cells: list[CellRun]) -> None:
    """No cell shows an error, and a fresh kernel ran every code cell once, in order."""
    errors = [error for cell in cells for error in cell["errors"]]
    assert errors == [], f"cells failed: {errors}"
    counts = [cell["count"] for cell in cells]
    assert counts == list(range(1, len(cells) + 1)), f"not every cell ran: execution counts {counts}"


def watch_for_trouble(page: Page, jupyter: Jupyter) -> tuple[list[str], list[str]]:
    """Uncaught page errors (but the front end's own known ones) and browser dialogs (a dialog
    is dismissed, and recorded)."""
    errors: list[str] = []
    dialogs: list[str] = []

    def record(exc: Exception) -> None:
        if str(exc) not in KNOWN_PAGE_ERRORS[jupyter.app]:
            errors.append(str(exc))

    def dismiss(dialog: Dialog) -> None:
        dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("pageerror", record)
    page.on("dialog", dismiss)
    return errors, dialogs


Trouble = tuple[list[str], list[str]]


def run_notebook(page: Page, jupyter: Jupyter, name: str, *cells: str) -> Trouble:
    """Write a notebook of these cells as ``name``, open it and run every cell (each must run
    cleanly); the page is watched for trouble (see :func:`watch_for_trouble`) from the start."""
    trouble = watch_for_trouble(page, jupyter)
    put_notebook(jupyter, name, *cells)
    open_notebook(page, jupyter, name)
    assert_ran_cleanly(run_all(page))
    return trouble


def assert_no_trouble(trouble: Trouble, offsite_requests: list[str]) -> None:
    """No page error, no dialog, and no request that left the Jupyter server."""
    errors, dialogs = trouble
    assert errors == [] and dialogs == [], f"page errors {errors}, dialogs {dialogs}"
    assert offsite_requests == [], f"the page tried to reach the network: {offsite_requests}"


def kernel_label(widget: str, *traits: str) -> str:
    """Code ending a cell: ``widget`` shown above a label the kernel rewrites whenever one of
    ``traits`` changes, ``kernel: name=repr(value) ...``: proof that the kernel saw an act."""
    return f"""\
seen = ipywidgets.Label()
def show_state(change=None):
    seen.value = "kernel: " + " ".join(f"{{name}}={{getattr({widget}, name)!r}}" for name in {list(traits)!r})
{widget}.observe(show_state, names={list(traits)!r})
show_state()
ipywidgets.VBox([{widget}, seen])
"""


def seen_by_kernel(page: Page) -> Locator:
    """The label of :func:`kernel_label`."""
    return page.locator(".widget-label", has_text="kernel: ")


def save_shot(target: Locator | Page, name: str) -> None:
    """Save what the user sees of ``target`` as ``artifacts/<name>.png``."""
    ARTIFACTS.mkdir(exist_ok=True)
    if not isinstance(target, Page):
        target.scroll_into_view_if_needed()
    target.screenshot(path=ARTIFACTS / f"{name}.png")


def kernel_id(jupyter: Jupyter, name: str) -> str:
    """The id of the kernel of the notebook ``name`` (from the server's sessions)."""
    ids = [s["kernel"]["id"] for s in jupyter.api("GET", "/api/sessions") if s["path"] == name]
    assert len(ids) == 1, f"expected one session for {name}, got {ids}"
    return ids[0]


def kill_kernel(jupyter: Jupyter, name: str) -> None:
    """SIGKILL the kernel process of ``name``, as a crash or the OOM killer would. The server
    notices within a few seconds and starts a new kernel under the same id."""
    kid = kernel_id(jupyter, name)
    procs = [p for p in psutil.process_iter(["cmdline"]) if any(kid in arg for arg in p.info["cmdline"] or ())]
    assert len(procs) == 1, f"expected one process for kernel {kid}, got {[p.pid for p in procs]}"
    procs[0].kill()


def restart_kernel_from_menu(page: Page) -> None:
    """Kernel > Restart Kernel in the page, confirmed, as a user does."""
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:restart-kernel'); }")
    accept_jupyter_dialog(page, "Restart Kernel")


def restart_kernel(jupyter: Jupyter, name: str) -> None:
    """Restart the kernel of ``name`` through the server's REST API, as another tab or a script would."""
    jupyter.api("POST", f"/api/kernels/{kernel_id(jupyter, name)}/restart", timeout=RESTART_TIMEOUT_S)


def accept_jupyter_dialog(page: Page, title: str) -> None:
    """Answer the front end's own dialog titled ``title`` with its last button ("Ok", "Restart")."""
    dialog = page.locator(".jp-Dialog", has_text=title)
    dialog.wait_for(timeout=KERNEL_TIMEOUT_MS)
    dialog.locator(".jp-Dialog-footer button").last.click()
    dialog.wait_for(state="detached", timeout=KERNEL_TIMEOUT_MS)
