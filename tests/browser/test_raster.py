"""Raster in real JupyterLab and Chromium, offline: the first window is painted from the
widget's state (no request), the threshold slider repaints in the page, a click selects a unit
(the kernel sees it) and shows its tuning curve and a token's context, the arrow keys move the
selection; a raster moved before it was shown asks for its window; in JupyterLab and in
Notebook 7, a click reaches the kernel and a hostile token text shows literally."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from playwright.sync_api import Page, expect

from tests.browser.conftest import ARTIFACTS, FRONTENDS
from tests.browser.notebook_page import assert_ran_cleanly, open_notebook, put_notebook, run_all, watch_for_trouble

if TYPE_CHECKING:
    from tests.browser.conftest import Jupyter

RENDER_TIMEOUT_MS = 30_000
KERNEL_TIMEOUT_MS = 15_000
HOSTILE = "<img src=x onerror=alert(1)>"
SETUP = f"""\
import ipywidgets
import llmscope
from llmscope.widgets.raster import Raster

model = llmscope.load("grammar-2l")
stim = llmscope.stimuli.grammar(model, n_docs=12, seed=0)
rec = llmscope.record(model, stim, ["mlp.0"], dtype="float32", progress=False)
first = rec.tokens.index[~rec.tokens["is_bos"].astype(bool)][0] if "is_bos" in rec.tokens else rec.tokens.index[1]
rec.tokens.loc[first, "text"] = {HOSTILE!r}
"""
LIVE_CELL = """\
raster = Raster(rec, "mlp.0", sort_by="pos_tag")
seen = ipywidgets.Label()
def show_state(change=None):
    seen.value = (f"kernel: selection={raster.selection} rung={raster.rung} token={raster.token} "
                  f"view={raster.view} error={raster.last_error!r}")
raster.observe(show_state, names=["selection", "rung", "token", "view", "last_error"])
show_state()
ipywidgets.VBox([raster, seen])
"""
MOVED_CELL = """\
raster = Raster(rec, "mlp.0")
raster.view = (40, 140, 300, 500)
raster
"""

# Move the slider and read the canvas in one synchronous turn of the page: it can only have
# changed if the page thresholded by itself, with no kernel round trip.
SLIDE = """([rung]) => {
    const slider = document.querySelector('.llmscope-raster input.llmscope-threshold');
    const canvas = document.querySelector('canvas.llmscope-raster-canvas');
    const before = canvas.toDataURL();
    const start = performance.now();
    slider.value = String(rung);
    slider.dispatchEvent(new Event('input', { bubbles: true }));
    const ms = performance.now() - start;
    return { changed: canvas.toDataURL() !== before, rung: canvas.dataset.rung, ms,
             paintMs: Number(canvas.dataset.paintMs), spikes: Number(canvas.dataset.spikes) };
}"""


def test_raster_is_live(page: Page, jupyter: "Jupyter", offsite_requests: list[str]) -> None:
    errors, dialogs = watch_for_trouble(page, jupyter)
    put_notebook(jupyter, "raster.ipynb", SETUP, LIVE_CELL)
    open_notebook(page, jupyter, "raster.ipynb")
    assert_ran_cleanly(run_all(page))

    widget = page.locator(".llmscope-raster")
    canvas = widget.locator("canvas.llmscope-raster-canvas")
    seen = page.locator(".widget-label", has_text="kernel: ")
    expect(canvas).to_have_attribute("data-view", "0,512,0,1000", timeout=RENDER_TIMEOUT_MS)
    expect(canvas).to_have_attribute("data-rung", "127")
    assert canvas.evaluate("c => [c.width, c.height]") == [1000, 512]
    first_paint = float(canvas.get_attribute("data-first-paint-ms"))
    assert canvas.get_attribute("data-round-trip-ms") is None  # the first window came with the state
    spikes_at_3 = int(canvas.get_attribute("data-spikes"))
    expect(widget.locator(".llmscope-threshold-value")).to_have_text("z > 3.00")

    moved = page.evaluate(SLIDE, [60])
    assert moved["changed"] and moved["rung"] == "60", moved
    assert moved["spikes"] > spikes_at_3, moved  # a lower threshold: more spikes
    expect(seen).to_contain_text("rung=60", timeout=KERNEL_TIMEOUT_MS)  # the kernel hears of it, debounced
    slider = widget.locator("input.llmscope-threshold")
    slider.focus()
    page.keyboard.press("ArrowRight")  # the slider works from the keyboard
    expect(canvas).to_have_attribute("data-rung", "61")
    expect(seen).to_contain_text("rung=61", timeout=KERNEL_TIMEOUT_MS)
    assert slider.get_attribute("aria-valuetext").startswith("z > ")

    canvas.click(position={"x": 100, "y": 20})
    expect(seen).to_contain_text("selection=[", timeout=KERNEL_TIMEOUT_MS)
    expect(seen).not_to_contain_text("selection=[]")
    bars = widget.locator(".llmscope-raster-bar")
    expect(bars).to_have_count(9, timeout=KERNEL_TIMEOUT_MS)  # the organism's 9 POS tags
    expect(bars.first).to_have_attribute("aria-label", re.compile(r"^ADJ: -?\d+\.\d{3}$"))
    unit = int(widget.locator(".llmscope-raster-unit").get_attribute("data-unit"))
    expect(seen).to_contain_text(f"selection=[{unit}]")
    expect(widget.locator(".llmscope-raster-examples li")).to_have_count(8)
    expect(widget.locator(".llmscope-raster-token")).to_contain_text("pos_tag=")
    expect(widget.locator(".llmscope-raster-row")).to_have_count(1)

    page.keyboard.press("ArrowDown")  # the canvas has the focus after the click
    expect(seen).not_to_contain_text(f"selection=[{unit}]", timeout=KERNEL_TIMEOUT_MS)
    expect(widget.locator(".llmscope-raster-unit")).not_to_have_attribute("data-unit", str(unit),
                                                                          timeout=KERNEL_TIMEOUT_MS)

    widget.locator('button[data-action="in"]').click()  # zoom: a new window from the kernel
    expect(canvas).to_have_attribute("data-view", "0,512,250,750", timeout=KERNEL_TIMEOUT_MS)
    expect(seen).to_contain_text("view=(0, 512, 250, 750)")
    assert float(canvas.get_attribute("data-round-trip-ms")) > 0
    canvas.focus()
    page.keyboard.press("Home")  # back to the first tokens from the keyboard
    expect(canvas).to_have_attribute("data-view", "0,512,0,500", timeout=KERNEL_TIMEOUT_MS)

    canvas.click(position={"x": 0.5, "y": 20})  # a token: its context, from the kernel
    expect(widget.locator(".llmscope-raster-token")).to_have_attribute("data-column", "0", timeout=KERNEL_TIMEOUT_MS)
    expect(seen).to_contain_text("token=0")
    expect(widget.locator(".llmscope-errors")).to_be_hidden()

    widget.locator('button[data-action="out"]').click()
    widget.locator('button[data-action="out"]').click()  # every token: 512 x 1473 cells
    expect(canvas).to_have_attribute("data-view", "0,512,0,1473", timeout=KERNEL_TIMEOUT_MS)
    window_ms = float(canvas.get_attribute("data-window-ms"))
    big = page.evaluate(SLIDE, [90])
    assert big["changed"] and big["ms"] < 250, big

    widget.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    widget.screenshot(path=ARTIFACTS / "raster_widget.png")
    print(f"\nraster first paint {first_paint:.0f} ms (render to pixels, the window from the state); threshold change "
          f"{moved['ms']:.1f} ms at 512 x 1000 cells, {big['ms']:.1f} ms at 512 x 1473; a window's reply to "
          f"pixels (decode, paint) {window_ms:.1f} ms at 512 x 1473")
    assert errors == [] and dialogs == [], f"page errors {errors}, dialogs {dialogs}"
    assert offsite_requests == [], f"the page tried to reach the network: {offsite_requests}"


@FRONTENDS
def test_raster_shows_hostile_text_literally(page: Page, jupyter: "Jupyter", offsite_requests: list[str]) -> None:
    """The raster renders, a click on its first token reaches the kernel (the selection and the
    token's context come back), and the hostile text of that token stays text."""
    errors, dialogs = watch_for_trouble(page, jupyter)
    put_notebook(jupyter, "raster_hostile.ipynb", SETUP, LIVE_CELL)
    open_notebook(page, jupyter, "raster_hostile.ipynb")
    assert_ran_cleanly(run_all(page))

    widget = page.locator(".llmscope-raster")
    canvas = widget.locator("canvas.llmscope-raster-canvas")
    seen = page.locator(".widget-label", has_text="kernel: ")
    expect(canvas).to_have_attribute("data-view", "0,512,0,1000", timeout=RENDER_TIMEOUT_MS)
    # the hostile token is the first analysed token: column 0, the canvas's first pixel at one
    # column a pixel (Chromium rounds offsetX, so x=0.5 would land in column 1)
    canvas.click(position={"x": 0, "y": 20})
    expect(seen).to_contain_text("token=0", timeout=KERNEL_TIMEOUT_MS)
    expect(seen).not_to_contain_text("selection=[]")
    token = widget.locator(".llmscope-raster-token")
    expect(token).to_have_attribute("data-column", "0", timeout=KERNEL_TIMEOUT_MS)
    expect(token.locator("mark")).to_have_text(HOSTILE)
    expect(token.locator("mark")).to_be_visible()
    expect(widget.locator(".llmscope-raster-bar")).to_have_count(9, timeout=KERNEL_TIMEOUT_MS)
    expect(widget.locator(".llmscope-raster-row")).to_have_count(1)  # the clicked unit, marked
    expect(widget.locator("img, script")).to_have_count(0)
    page.wait_for_timeout(500)  # time enough for a broken image to fire onerror, had one been made
    expect(widget.locator(".llmscope-errors")).to_be_hidden()
    widget.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    widget.screenshot(path=ARTIFACTS / f"raster_hostile_{jupyter.app}.png")
    assert errors == [] and dialogs == [], f"page errors {errors}, dialogs {dialogs}"
    assert offsite_requests == [], f"the page tried to reach the network: {offsite_requests}"


def test_a_raster_moved_before_it_was_shown_asks_for_its_window(page: Page, jupyter: "Jupyter",
                                                                 offsite_requests: list[str]) -> None:
    """The state's first window is of the first view: a view set in Python before display
    drops it, and the page asks the kernel for the window on show instead."""
    errors, dialogs = watch_for_trouble(page, jupyter)
    put_notebook(jupyter, "raster_moved.ipynb", SETUP, MOVED_CELL)
    open_notebook(page, jupyter, "raster_moved.ipynb")
    assert_ran_cleanly(run_all(page))

    widget = page.locator(".llmscope-raster")
    canvas = widget.locator("canvas.llmscope-raster-canvas")
    expect(canvas).to_have_attribute("data-view", "40,140,300,500", timeout=RENDER_TIMEOUT_MS)
    assert canvas.evaluate("c => [c.width, c.height]") == [200, 100]
    assert float(canvas.get_attribute("data-round-trip-ms")) > 0  # asked, not taken from the state
    expect(widget.locator(".llmscope-status")).to_contain_text("units 40–139 of 512, tokens 300–499")
    expect(widget.locator(".llmscope-errors")).to_be_hidden()
    assert errors == [] and dialogs == [], f"page errors {errors}, dialogs {dialogs}"
    assert offsite_requests == [], f"the page tried to reach the network: {offsite_requests}"
