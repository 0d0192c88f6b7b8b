"""The README's `make lab`, as a user sees it: JupyterLab on the tutorials in Chromium, offline."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

import nbformat
from playwright.sync_api import Page, expect

if TYPE_CHECKING:
    from tests.browser.conftest import Lab

RUN_TIMEOUT_MS = 120_000  # the quickstart's first cells load SmolLM2: 10-20 s on a 2-core CPU
KERNEL_TIMEOUT_MS = 60_000
RENDER_TIMEOUT_MS = 15_000
QUICKSTART_FIGURES = 2  # px.bar of the next-token probabilities and px.imshow of mlp.15
HOSTILE = ('<img src=x onerror="window.__pwned=1">', "<script>window.__pwned=2</script>")
HOSTILE_CELL = f"""\
import llmscope

model = llmscope.load("grammar-2l")
stim = llmscope.Stimuli.from_ids(model, [[1, 5]], name="hostile")
stim.tokens["text"] = {list(HOSTILE)!r}
rec = llmscope.record(model, stim, "mlp.0", progress=False)
display(rec)
stim.tokens
"""


class CellRun(TypedDict):
    """What a code cell shows after a run: its execution count and its errors."""

    count: int | None
    errors: list[str]


def open_notebook(page: Page, lab: Lab, name: str) -> None:
    """Open ``name`` in Lab and wait until its kernel is idle."""
    page.goto(lab.notebook_url(name))
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
    # Read errors from the model: Lab draws an error with the stderr renderer, so in the page
    # it looks like any warning (data-mime-type="application/vnd.jupyter.stderr").
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


def test_quickstart_runs_offline(page: Page, lab: Lab, offsite_requests: list[str]) -> None:
    """00_quickstart runs top to bottom, draws its figures and predicts ' Paris', offline."""
    open_notebook(page, lab, "00_quickstart.ipynb")
    cells = run_all(page)

    assert_ran_cleanly(cells)
    expect(page.locator(".js-plotly-plot:has(svg)")).to_have_count(QUICKSTART_FIGURES, timeout=RENDER_TIMEOUT_MS)
    check = page.locator(".jp-CodeCell", has_text="NBVAL_CHECK_OUTPUT").locator(".jp-OutputArea-output")
    check.scroll_into_view_if_needed()
    expect(check).to_be_visible()
    expect(check).to_contain_text("top guess: ' Paris'")
    assert offsite_requests == [], f"the page tried to reach the network: {offsite_requests}"


def test_token_text_is_escaped(page: Page, lab: Lab, offsite_requests: list[str]) -> None:
    """Hostile token text in a Recording and a trial table shows as text and never runs."""
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(HOSTILE_CELL)],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    lab.api("PUT", "/api/contents/hostile_tokens.ipynb", {"type": "notebook", "format": "json", "content": notebook})
    open_notebook(page, lab, "hostile_tokens.ipynb")
    cells = run_all(page)

    assert_ran_cleanly(cells)
    outputs = page.locator(".jp-OutputArea")
    for text in HOSTILE:
        shown = outputs.get_by_text(text, exact=True)
        expect(shown).to_have_count(2, timeout=RENDER_TIMEOUT_MS)  # the Recording and the trial table
        for cell in shown.all():
            expect(cell).to_be_visible()
    # Lab rewrites a relative src ("x" becomes "/files/x?..."), so look for any image at all.
    expect(outputs.locator("img")).to_have_count(0)
    page.wait_for_timeout(1000)  # time enough for a broken image to fire onerror, had one been made
    assert page.evaluate("() => window.__pwned") is None, "token text ran as code in the page"
    assert offsite_requests == [], f"the page tried to reach the network: {offsite_requests}"
