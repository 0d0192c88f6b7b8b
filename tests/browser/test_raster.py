"""Raster in real JupyterLab and Chromium, offline: the first window is painted from the
widget's state (no request), the threshold slider repaints in the page, a click selects a unit
(the kernel sees it) and shows its tuning curve and a token's context, the arrow keys move the
selection; a raster moved before it was shown asks for its window. Tutorial 04's raster, more
cells than pixels, shows every spike in view, beside its side panel at the notebook's width.
In JupyterLab and in Notebook 7, the keys reach the kernel and a hostile token stays text."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from playwright.sync_api import Page, expect

from tests.browser.conftest import FRONTENDS
from tests.browser.notebook_page import assert_no_trouble, kernel_label, run_notebook, save_shot, seen_by_kernel

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
LIVE_CELL = 'raster = Raster(rec, "mlp.0", sort_by="pos_tag")\n' + kernel_label(
    "raster", "selection", "rung", "token", "view", "last_error")
MOVED_CELL = """\
raster = Raster(rec, "mlp.0")
raster.view = (40, 140, 300, 500)
raster
"""
# Tutorial 04's raster (the organism's mlp.0 at z > 2.5): its first view has 512 x 1,000 cells
# for about 560 x 400 pixels. The kernel writes where the spikes of that view are.
SPIKES = "spikes_in_view.json"
TUTORIAL = f"""\
import json
import numpy as np
import llmscope
from llmscope.widgets import Raster

model = llmscope.load("grammar-2l")
stim = llmscope.stimuli.grammar(model, n_docs=32, seed=5)
rec = llmscope.record(model, stim, ["mlp.0", "attn.1"], progress=False)
raster = Raster(rec, "mlp.0", sort_by="pos_tag", threshold=2.5)
u0, u1, t0, t1 = raster.view
rows, cols = np.nonzero(raster.codes()[u0:u1, t0:t1] > raster.rung)
with open({SPIKES!r}, "w") as out:
    json.dump({{"shape": [u1 - u0, t1 - t0], "rows": rows.tolist(), "cols": cols.tolist()}}, out)
raster
"""

# Move the slider and read the canvas in one synchronous turn of the page: it can only have
# changed if the page thresholded by itself, with no kernel round trip.
SLIDE = """([rung]) => {
    const slider = document.querySelector('.llmscope-raster input.llmscope-threshold');
    const canvas = document.querySelector('canvas.llmscope-raster-canvas');
    const before = canvas.toDataURL();
    slider.value = String(rung);
    slider.dispatchEvent(new Event('input', { bubbles: true }));
    return { changed: canvas.toDataURL() !== before, rung: canvas.dataset.rung, spikes: Number(canvas.dataset.spikes) };
}"""
# Which canvas pixels show a spike (the spike colour, MAPS.blues[4]).
SPIKE_PIXELS = """c => {
    const { data } = c.getContext('2d').getImageData(0, 0, c.width, c.height);
    const dark = [];
    for (let i = 0; i < c.width * c.height; i++) {
        if (data[4 * i] === 8 && data[4 * i + 1] === 48 && data[4 * i + 2] === 107) dark.push(i);
    }
    return { width: c.width, height: c.height, dark };
}"""


def test_raster_is_live(page: Page, jupyter: "Jupyter", offsite_requests: list[str]) -> None:
    trouble = run_notebook(page, jupyter, "raster.ipynb", SETUP, LIVE_CELL)
    widget = page.locator(".llmscope-raster")
    canvas = widget.locator("canvas.llmscope-raster-canvas")
    seen = seen_by_kernel(page)
    expect(canvas).to_have_attribute("data-view", "0,512,0,1000", timeout=RENDER_TIMEOUT_MS)
    expect(canvas).to_have_attribute("data-rung", "127")
    assert canvas.get_attribute("data-round-trip-ms") is None  # the first window came with the state
    spikes_at_3 = int(canvas.get_attribute("data-spikes"))
    expect(widget.locator(".llmscope-threshold-value")).to_have_text("z > 3.00")
    expect(widget.locator(".llmscope-band").first).to_have_text("ADJ")  # rows sorted by pos_tag, in bands
    assert widget.locator(".llmscope-raster-gutter .llmscope-tick").count() >= 10  # unit ids as ticks
    assert widget.locator(".llmscope-raster-taxis .llmscope-tick").count() >= 4  # a token axis

    moved = page.evaluate(SLIDE, [60])
    assert moved["changed"] and moved["rung"] == "60", moved
    assert moved["spikes"] > spikes_at_3, moved  # a lower threshold: more spikes
    expect(seen).to_contain_text("rung=60", timeout=KERNEL_TIMEOUT_MS)  # the kernel hears of it, debounced

    canvas.click(position={"x": 100, "y": 20})
    expect(seen).to_contain_text("selection=[", timeout=KERNEL_TIMEOUT_MS)
    expect(seen).not_to_contain_text("selection=[]")
    bars = widget.locator(".llmscope-raster-bar")
    expect(bars).to_have_count(9, timeout=KERNEL_TIMEOUT_MS)  # the organism's 9 POS tags
    expect(bars.first).to_have_attribute("aria-label", re.compile(r"^ADJ: -?\d+\.\d{3} ± \d+\.\d{3}$"))
    expect(bars.locator("b")).to_have_count(9)  # an error bar each
    unit = int(widget.locator(".llmscope-raster-unit").get_attribute("data-unit"))
    expect(seen).to_contain_text(f"selection=[{unit}]")
    expect(widget.locator(".llmscope-raster-examples li")).to_have_count(8)
    expect(widget.locator(".llmscope-raster-token")).to_contain_text("pos_tag=")
    expect(widget.locator(".llmscope-raster-row")).to_have_count(1)
    expect(widget.locator(".llmscope-tick.is-selected")).to_have_text(f"▶ {unit}")  # its id, marked in the gutter
    marker = widget.locator(".llmscope-raster-row").bounding_box()
    assert marker["height"] >= 5, f"the selected-unit marker is a hairline: {marker}"

    canvas.hover(position={"x": 300, "y": 200})
    expect(widget.locator(".llmscope-tick.is-hover")).to_have_text(re.compile(r"^\d+$"))  # the unit under the pointer
    expect(widget.locator(".llmscope-readout")).to_contain_text("mlp.0:")

    widget.locator('button[data-action="in"]').click()  # zoom: a new window from the kernel
    expect(canvas).to_have_attribute("data-view", "0,512,250,750", timeout=KERNEL_TIMEOUT_MS)
    expect(seen).to_contain_text("view=(0, 512, 250, 750)")
    assert float(canvas.get_attribute("data-round-trip-ms")) > 0
    canvas.focus()
    page.keyboard.press("Home")  # back to the first tokens from the keyboard
    expect(canvas).to_have_attribute("data-view", "0,512,0,500", timeout=KERNEL_TIMEOUT_MS)

    canvas.click(position={"x": 0, "y": 20})  # a token: its context, from the kernel
    expect(widget.locator(".llmscope-raster-token")).to_have_attribute("data-column", "0", timeout=KERNEL_TIMEOUT_MS)
    expect(seen).to_contain_text("token=0")
    expect(widget.locator(".llmscope-errors")).to_be_hidden()

    widget.locator('button[data-action="out"]').click()
    widget.locator('button[data-action="out"]').click()  # every token: 512 x 1473 cells
    expect(canvas).to_have_attribute("data-view", "0,512,0,1473", timeout=KERNEL_TIMEOUT_MS)
    assert page.evaluate(SLIDE, [90])["changed"]
    save_shot(widget, "raster_widget")
    assert_no_trouble(trouble, offsite_requests)


@FRONTENDS
def test_raster_keys_and_hostile_text(page: Page, jupyter: "Jupyter", offsite_requests: list[str]) -> None:
    """The slider and the canvas take their keys (the kernel sees the rung and the selection
    move); a click on the first token shows its hostile text as text."""
    trouble = run_notebook(page, jupyter, "raster_keys.ipynb", SETUP, LIVE_CELL)
    widget = page.locator(".llmscope-raster")
    canvas = widget.locator("canvas.llmscope-raster-canvas")
    seen = seen_by_kernel(page)
    expect(canvas).to_have_attribute("data-view", "0,512,0,1000", timeout=RENDER_TIMEOUT_MS)
    slider = widget.locator("input.llmscope-threshold")
    slider.focus()
    page.keyboard.press("ArrowRight")
    expect(canvas).to_have_attribute("data-rung", "128")
    expect(seen).to_contain_text("rung=128", timeout=KERNEL_TIMEOUT_MS)
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    expect(seen).to_contain_text("rung=126", timeout=KERNEL_TIMEOUT_MS)
    assert slider.get_attribute("aria-valuetext").startswith("z > ")

    # the hostile token is the first analysed token: column 0, the canvas's first pixel
    canvas.click(position={"x": 0, "y": 20})
    expect(seen).to_contain_text("token=0", timeout=KERNEL_TIMEOUT_MS)
    expect(seen).not_to_contain_text("selection=[]")
    token = widget.locator(".llmscope-raster-token")
    expect(token).to_have_attribute("data-column", "0", timeout=KERNEL_TIMEOUT_MS)
    expect(token.locator("mark")).to_have_text(HOSTILE)
    expect(token.locator("mark")).to_be_visible()
    unit = widget.locator(".llmscope-raster-unit")
    expect(unit).to_have_attribute("data-unit", re.compile(r"\d+"), timeout=KERNEL_TIMEOUT_MS)
    first = unit.get_attribute("data-unit")
    expect(seen).to_contain_text(f"selection=[{first}]")
    page.keyboard.press("ArrowDown")  # the canvas has the focus after the click: the next unit
    expect(seen).not_to_contain_text(f"selection=[{first}]", timeout=KERNEL_TIMEOUT_MS)
    expect(unit).not_to_have_attribute("data-unit", first, timeout=KERNEL_TIMEOUT_MS)
    page.keyboard.press("PageDown")  # no next page of units: the view stays, nothing breaks
    expect(widget.locator("img, script")).to_have_count(0)
    page.wait_for_timeout(500)  # time enough for a broken image to fire onerror, had one been made
    expect(widget.locator(".llmscope-errors")).to_be_hidden()
    save_shot(widget, f"raster_keys_{jupyter.app}")
    assert_no_trouble(trouble, offsite_requests)


def test_every_spike_in_view_is_drawn_beside_the_side_panel(page: Page, jupyter: "Jupyter",
                                                           offsite_requests: list[str]) -> None:
    """More cells than pixels: every spike of the view darkens the pixel it falls in, and no
    pixel is dark without one, at the notebook's width and at 900 px (the canvas follows the
    width, pooled anew); the tuning panel stays beside the canvas."""
    trouble = run_notebook(page, jupyter, "raster_spikes.ipynb", TUTORIAL)
    widget = page.locator(".llmscope-raster")
    canvas = widget.locator("canvas.llmscope-raster-canvas")
    expect(canvas).to_have_attribute("data-view", "0,512,0,1000", timeout=RENDER_TIMEOUT_MS)
    spikes = json.loads(jupyter.api("GET", f"/api/contents/{SPIKES}?content=1&format=text")["content"])
    n_units, n_tokens = spikes["shape"]
    assert int(canvas.get_attribute("data-spikes")) == len(spikes["rows"]) > 10_000
    # JupyterLab's notebook with the file browser open (the widget about 970 px wide), then 900 px
    for viewport, widest in ((1400, 1000), (1330, 900)):
        page.set_viewport_size({"width": viewport, "height": 1000})
        page.wait_for_function("([w, c, widest]) => w.clientWidth <= widest && Math.abs(c.clientWidth - c.width) <= 1",
                               arg=[widget.element_handle(), canvas.element_handle(), widest])
        shown = canvas.evaluate(SPIKE_PIXELS)
        width, height = shown["width"], shown["height"]
        assert width < n_tokens and height < n_units, f"the canvas has {width} x {height} pixels: nothing to pool"
        box = canvas.bounding_box()
        assert width >= round(box["width"]) - 2 and height >= round(box["height"]) - 2, "the canvas is drawn blurred"
        at = [(r * height // n_units) * width + c * width // n_tokens for r, c in zip(spikes["rows"], spikes["cols"])]
        dark = set(shown["dark"])
        lost = sum(pixel not in dark for pixel in at)
        assert lost == 0, f"{lost} of {len(at)} spikes in view have no dark pixel"
        assert dark == set(at), f"{len(dark - set(at))} dark pixels show no spike"
        side = widget.locator(".llmscope-raster-side").bounding_box()
        frame = widget.bounding_box()
        print(f"\nraster at {frame['width']:.0f} px: canvas {box['width']:.0f} x {box['height']:.0f} px for "
              f"{n_units} x {n_tokens} cells, {len(at)} spikes, {len(dark)} dark pixels")
        assert side["x"] >= box["x"] + box["width"] and side["y"] < box["y"] + box["height"], "the side panel wrapped"
        assert side["x"] + side["width"] <= frame["x"] + frame["width"] + 1, "the side panel is cut off"
    save_shot(widget, "raster_every_spike")
    assert_no_trouble(trouble, offsite_requests)


def test_a_raster_moved_before_it_was_shown_asks_for_its_window(page: Page, jupyter: "Jupyter",
                                                                 offsite_requests: list[str]) -> None:
    """The state's first window is of the first view: a view set in Python before display
    drops it, and the page asks the kernel for the window on show instead."""
    trouble = run_notebook(page, jupyter, "raster_moved.ipynb", SETUP, MOVED_CELL)
    widget = page.locator(".llmscope-raster")
    canvas = widget.locator("canvas.llmscope-raster-canvas")
    expect(canvas).to_have_attribute("data-view", "40,140,300,500", timeout=RENDER_TIMEOUT_MS)
    assert canvas.evaluate("c => [c.width, c.height]") == [200, 100]  # fewer cells than pixels: one a cell
    assert float(canvas.get_attribute("data-round-trip-ms")) > 0  # asked, not taken from the state
    expect(widget.locator(".llmscope-status")).to_contain_text("units 40–139 of 512, tokens 300–499")
    expect(widget.locator(".llmscope-errors")).to_be_hidden()
    assert_no_trouble(trouble, offsite_requests)
