"""AblationPanel in real JupyterLab and Chromium, offline: move the induction head's slider with
the keys and by dragging, switch to mean ablation, reset; the kernel sees each act and the
distribution redraws. Hostile text stays text, in JupyterLab and in Notebook 7."""

from __future__ import annotations

from typing import TYPE_CHECKING

from playwright.sync_api import Page, expect

from tests.browser.conftest import ARTIFACTS, FRONTENDS
from tests.browser.notebook_page import assert_ran_cleanly, open_notebook, put_notebook, run_all, watch_for_trouble

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
# A label the kernel rewrites whenever the panel's Python state changes: what the kernel saw.
SEEN = """\
seen = ipywidgets.Label()
def show_state(change=None):
    seen.value = f"kernel: gains={panel.gains} mode={panel.mode} error={panel.last_error!r}"
panel.observe(show_state, names=["gains", "mode", "last_error"])
show_state()
ipywidgets.VBox([panel, seen])
"""
LIVE_CELL = 'panel = AblationPanel(model, "the dog runs . the dog", units=[("attn.1", 0), ("attn.0", 2)])\n' + SEEN
HOSTILE = "<img src=x onerror=alert(1)>"
HOSTILE_CELL = f"""\
stim = llmscope.Stimuli.from_ids(model, [[1, 973, 4, 973]], name="hostile", n_bos=1)
stim.tokens["text"] = ["<bos>", {HOSTILE!r}, "the", "dog"]
panel = AblationPanel(model, stim, units={{{HOSTILE!r}: ("attn.1", [0])}})
""" + SEEN


def test_ablation_panel_is_live(page: Page, jupyter: "Jupyter", offsite_requests: list[str]) -> None:
    errors, dialogs = watch_for_trouble(page, jupyter)
    put_notebook(jupyter, "ablation_panel.ipynb", SETUP, LIVE_CELL)
    open_notebook(page, jupyter, "ablation_panel.ipynb")
    assert_ran_cleanly(run_all(page))

    widget = page.locator(".llmscope-ablation")
    seen = page.locator(".widget-label", has_text="kernel: ")
    dist = widget.locator(".llmscope-dist")
    sliders = widget.locator('input[type="range"]')
    expect(sliders).to_have_count(2, timeout=RENDER_TIMEOUT_MS)
    expect(dist).to_have_attribute("data-factors", "1,1", timeout=RENDER_TIMEOUT_MS)
    induction = widget.get_by_label("gain of attn.1:0: 0 lesions, 1 intact, 2 doubles")
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
    expect(seen).to_contain_text("mode=mean", timeout=KERNEL_TIMEOUT_MS)
    expect(widget.locator(".llmscope-status")).to_contain_text("mean mode", timeout=KERNEL_TIMEOUT_MS)
    widget.scroll_into_view_if_needed()
    ARTIFACTS.mkdir(exist_ok=True)
    widget.screenshot(path=ARTIFACTS / "ablation_panel_widget.png")

    widget.get_by_role("button", name="reset (all ×1)").click()
    expect(seen).to_contain_text("gains={('attn.1', 0): 1.0, ('attn.0', 2): 1.0}", timeout=KERNEL_TIMEOUT_MS)
    expect(dist).to_have_attribute("data-factors", "1,1", timeout=KERNEL_TIMEOUT_MS)
    expect(induction).to_have_value("1")
    expect(metric).to_contain_text("change 0.000")
    assert dist.inner_text() == baseline, "reset did not bring back the baseline distribution"
    assert errors == [] and dialogs == [], f"page errors {errors}, dialogs {dialogs}"
    assert offsite_requests == [], f"the page tried to reach the network: {offsite_requests}"


@FRONTENDS
def test_ablation_panel_shows_hostile_text_literally(page: Page, jupyter: "Jupyter", offsite_requests: list[str]) -> None:
    """The panel renders, a slider moved from the keyboard reaches the kernel, and a hostile unit
    name and token text stay text."""
    errors, dialogs = watch_for_trouble(page, jupyter)
    put_notebook(jupyter, "ablation_hostile.ipynb", SETUP, HOSTILE_CELL)
    open_notebook(page, jupyter, "ablation_hostile.ipynb")
    assert_ran_cleanly(run_all(page))

    widget = page.locator(".llmscope-ablation")
    tokens = widget.locator(".llmscope-token")
    expect(tokens).to_have_count(4, timeout=RENDER_TIMEOUT_MS)
    expect(tokens.nth(1)).to_have_text(HOSTILE)
    expect(widget.locator(".llmscope-unit")).to_have_text(HOSTILE)
    expect(widget.locator("img, script")).to_have_count(0)
    widget.get_by_label(f"gain of {HOSTILE}: 0 lesions, 1 intact, 2 doubles").focus()
    page.keyboard.press("End")
    expect(page.locator(".widget-label", has_text="kernel: ")).to_contain_text(f"'{HOSTILE}': 2.0",
                                                                             timeout=KERNEL_TIMEOUT_MS)
    expect(widget.locator(".llmscope-dist")).to_have_attribute("data-factors", "2", timeout=KERNEL_TIMEOUT_MS)
    page.wait_for_timeout(500)  # time enough for a broken image to fire onerror, had one been made
    ARTIFACTS.mkdir(exist_ok=True)
    widget.screenshot(path=ARTIFACTS / f"ablation_panel_hostile_{jupyter.app}.png")
    assert errors == [] and dialogs == [], f"page errors {errors}, dialogs {dialogs}"
    assert offsite_requests == [], f"the page tried to reach the network: {offsite_requests}"
