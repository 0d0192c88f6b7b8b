"""AblationPanel in real JupyterLab and Chromium, offline: move the induction head's slider with
the keys and by dragging, switch to mean ablation, reset; the kernel sees each act and the
distribution redraws. Hostile text stays text, in JupyterLab and in Notebook 7."""

from __future__ import annotations

from typing import TYPE_CHECKING

from playwright.sync_api import Page, expect

from tests.browser.conftest import FRONTENDS
from tests.browser.notebook_page import assert_no_trouble, kernel_label, run_notebook, save_shot, seen_by_kernel

if TYPE_CHECKING:
    from tests.browser.conftest import Jupyter

RENDER_TIMEOUT_MS = 30_000
KERNEL_TIMEOUT_MS = 15_000
SETUP = """\
import ipywidgets
import llmscope
from llmscope.widgets.ablation import AblationPanel

model = llmscope.load("grammar-2l")
"""
SEEN = kernel_label("panel", "gains", "mode", "last_error")
LIVE_CELL = 'panel = AblationPanel(model, "the dog runs . the dog", units=[("attn.1", 0), ("attn.0", 2)])\n' + SEEN
HOSTILE = "<img src=x onerror=alert(1)>"
HOSTILE_CELL = f"""\
stim = llmscope.Stimuli.from_ids(model, [[1, 973, 4, 973]], name="hostile", n_bos=1)
stim.tokens["text"] = ["<bos>", {HOSTILE!r}, "the", "dog"]
panel = AblationPanel(model, stim, units={{{HOSTILE!r}: ("attn.1", [0])}})
""" + SEEN
LABEL = "gain of {}: 0 lesions, 1 intact, up to 2 stimulates"


def test_ablation_panel_is_live(page: Page, jupyter: "Jupyter", offsite_requests: list[str]) -> None:
    trouble = run_notebook(page, jupyter, "ablation_panel.ipynb", SETUP, LIVE_CELL)
    widget = page.locator(".llmscope-ablation")
    seen = seen_by_kernel(page)
    dist = widget.locator(".llmscope-dist")
    sliders = widget.locator('input[type="range"]')
    expect(sliders).to_have_count(2, timeout=RENDER_TIMEOUT_MS)
    expect(dist).to_have_attribute("data-factors", "1,1", timeout=RENDER_TIMEOUT_MS)
    induction = widget.get_by_label(LABEL.format("attn.1:0"))
    expect(induction).to_have_value("1")
    baseline = dist.inner_text()
    metric = widget.locator(".llmscope-metric")
    expect(metric).to_contain_text("change 0.000")

    induction.focus()
    page.keyboard.press("ArrowLeft")  # a native range input: the arrows move it by one step
    expect(seen).to_contain_text("gains={('attn.1', 0): 0.95, ('attn.0', 2): 1.0}", timeout=KERNEL_TIMEOUT_MS)
    page.keyboard.press("Home")
    expect(seen).to_contain_text("gains={('attn.1', 0): 0.0, ('attn.0', 2): 1.0}", timeout=KERNEL_TIMEOUT_MS)
    expect(dist).to_have_attribute("data-factors", "0,1", timeout=KERNEL_TIMEOUT_MS)
    expect(widget.locator(".llmscope-gain").first).to_have_text("×0.00 lesioned")
    lesioned = dist.inner_text()
    assert lesioned != baseline, "the distribution did not redraw when the induction head was lesioned"
    expect(metric).not_to_contain_text("change 0.000")

    box = sliders.nth(1).bounding_box()  # drag the previous-token head's slider to its right end
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] + 40, box["y"] + box["height"] / 2, steps=8)
    page.mouse.up()
    expect(seen).to_contain_text("('attn.0', 2): 2.0}", timeout=KERNEL_TIMEOUT_MS)
    expect(dist).to_have_attribute("data-factors", "0,2", timeout=KERNEL_TIMEOUT_MS)

    widget.get_by_label("mean ablation").check()
    expect(seen).to_contain_text("mode='mean'", timeout=KERNEL_TIMEOUT_MS)
    expect(widget.locator(".llmscope-status")).to_contain_text("mean mode", timeout=KERNEL_TIMEOUT_MS)
    save_shot(widget, "ablation_panel_widget")

    widget.get_by_role("button", name="reset (all ×1)").click()
    expect(seen).to_contain_text("gains={('attn.1', 0): 1.0, ('attn.0', 2): 1.0}", timeout=KERNEL_TIMEOUT_MS)
    expect(dist).to_have_attribute("data-factors", "1,1", timeout=KERNEL_TIMEOUT_MS)
    expect(induction).to_have_value("1")
    expect(metric).to_contain_text("change 0.000")
    assert dist.inner_text() == baseline, "reset did not bring back the baseline distribution"
    assert_no_trouble(trouble, offsite_requests)


@FRONTENDS
def test_ablation_panel_keys_and_hostile_text(page: Page, jupyter: "Jupyter", offsite_requests: list[str]) -> None:
    """A slider and the mode switch take their keys (the kernel sees the gain and the mode
    change); a hostile unit name and token text stay text."""
    trouble = run_notebook(page, jupyter, "ablation_keys.ipynb", SETUP, HOSTILE_CELL)
    widget = page.locator(".llmscope-ablation")
    seen = seen_by_kernel(page)
    tokens = widget.locator(".llmscope-token")
    expect(tokens).to_have_count(4, timeout=RENDER_TIMEOUT_MS)
    expect(tokens.nth(1)).to_have_text(HOSTILE)
    expect(widget.locator(".llmscope-unit")).to_have_text(HOSTILE)
    expect(widget.locator("img, script")).to_have_count(0)
    widget.get_by_label(LABEL.format(HOSTILE)).focus()
    page.keyboard.press("ArrowLeft")
    expect(seen).to_contain_text(f"'{HOSTILE}': 0.95", timeout=KERNEL_TIMEOUT_MS)
    page.keyboard.press("End")
    expect(seen).to_contain_text(f"'{HOSTILE}': 2.0", timeout=KERNEL_TIMEOUT_MS)
    expect(widget.locator(".llmscope-dist")).to_have_attribute("data-factors", "2", timeout=KERNEL_TIMEOUT_MS)
    widget.get_by_label("zero ablation").focus()
    page.keyboard.press("ArrowRight")  # the radio group: the next mode
    expect(seen).to_contain_text("mode='mean'", timeout=KERNEL_TIMEOUT_MS)
    expect(widget.get_by_label("mean ablation")).to_be_checked()
    page.wait_for_timeout(500)  # time enough for a broken image to fire onerror, had one been made
    save_shot(widget, f"ablation_panel_keys_{jupyter.app}")
    assert_no_trouble(trouble, offsite_requests)
