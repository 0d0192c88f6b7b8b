"""The README's `make lab`, as a user sees it: JupyterLab on the tutorials in Chromium, offline."""

from __future__ import annotations

from typing import TYPE_CHECKING

from playwright.sync_api import Page, expect

from tests.browser.notebook_page import assert_ran_cleanly, open_notebook, put_notebook, run_all

if TYPE_CHECKING:
    from tests.browser.conftest import Jupyter

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


def test_quickstart_runs_offline(page: Page, jupyter: Jupyter, offsite_requests: list[str]) -> None:
    """00_quickstart runs top to bottom, draws its figures and predicts ' Paris', offline."""
    open_notebook(page, jupyter, "00_quickstart.ipynb")
    cells = run_all(page)

    assert_ran_cleanly(cells)
    expect(page.locator(".js-plotly-plot:has(svg)")).to_have_count(QUICKSTART_FIGURES, timeout=RENDER_TIMEOUT_MS)
    check = page.locator(".jp-CodeCell", has_text="NBVAL_CHECK_OUTPUT").locator(".jp-OutputArea-output")
    check.scroll_into_view_if_needed()
    expect(check).to_be_visible()
    expect(check).to_contain_text("top guess: ' Paris'")
    assert offsite_requests == [], f"the page tried to reach the network: {offsite_requests}"


def test_token_text_is_escaped(page: Page, jupyter: Jupyter, offsite_requests: list[str]) -> None:
    """Hostile token text in a Recording and a trial table shows as text and never runs."""
    put_notebook(jupyter, "hostile_tokens.ipynb", HOSTILE_CELL)
    open_notebook(page, jupyter, "hostile_tokens.ipynb")
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
