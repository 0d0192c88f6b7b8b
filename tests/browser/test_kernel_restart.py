"""A widget outlives its kernel. Kill the kernel while widgets are open (a crash: the server
starts a new one), restart it from the Kernel menu, or restart it from outside the page (the REST
API, as another tab or a script does): each widget says so within seconds, as text, with its
controls disabled, and a click on it fails at once instead of hanging. Run the cells again (after
a reload, for a restart made elsewhere) and the new widgets work."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Page, expect

from tests.browser.notebook_page import (
    accept_jupyter_dialog, assert_no_trouble, assert_ran_cleanly, kill_kernel, reopen_notebook, restart_kernel,
    restart_kernel_from_menu, run_all, run_notebook, save_shot, seen_by_kernel, wait_for_idle_kernel,
)

if TYPE_CHECKING:
    from tests.browser.conftest import Jupyter

RENDER_TIMEOUT_MS = 30_000
KERNEL_TIMEOUT_MS = 15_000
# The server checks its kernels every 3 s; a REST restart returns once the new kernel is up.
LOST_WITHIN_S = 10.0
LOST = "KernelLost: the kernel restarted: this widget is no longer connected to Python. Run its cell again."
LOST_ELSEWHERE = ("KernelLost: the kernel was restarted outside this page: this widget is no longer connected "
                  "to Python. Reload the page, then run its cell again.")
CELLS = ("""\
import ipywidgets
import llmscope
from llmscope.widgets import AblationPanel, AttentionMap, Raster

model = llmscope.load("grammar-2l")
rec = llmscope.record(model, llmscope.stimuli.grammar(model, n_docs=4, seed=0), ["mlp.0"], progress=False)
""", """\
amap = AttentionMap(model, "the dog runs . the dog runs .")
panel = AblationPanel(model, "the dog runs . the dog", units=[("attn.1", 0)])
raster = Raster(rec, "mlp.0", sort_by="pos_tag")
seen = ipywidgets.Label("kernel: ")
panel.observe(lambda change: setattr(seen, "value", f"kernel: gains={panel.gains}"), names="gains")
ipywidgets.VBox([amap, panel, raster, seen])
""")
WIDGETS = (".llmscope-attention", ".llmscope-ablation", ".llmscope-raster")


def assert_widgets_live(page: Page) -> None:
    """Every widget drew what the kernel sent, and shows no error."""
    expect(page.locator("canvas.llmscope-heatmap")).to_have_attribute("data-focus", "1,0", timeout=RENDER_TIMEOUT_MS)
    expect(page.locator(".llmscope-dist")).to_have_attribute("data-factors", "1", timeout=RENDER_TIMEOUT_MS)
    expect(page.locator("canvas.llmscope-raster-canvas")).to_have_attribute("data-rung", "127", timeout=RENDER_TIMEOUT_MS)
    for widget in WIDGETS:
        expect(page.locator(widget).locator(".llmscope-errors")).to_be_hidden()


@pytest.mark.parametrize(("jupyter", "how"), [("lab", "kill"), ("notebook7", "menu"), ("lab", "rest")],
                         indirect=["jupyter"])
def test_widgets_say_their_kernel_is_gone(page: Page, jupyter: "Jupyter", how: str,
                                          offsite_requests: list[str]) -> None:
    page.set_viewport_size({"width": 1400, "height": 2000})  # the three widgets at once, for the screenshot
    name = f"kernel_{how}.ipynb"
    trouble = run_notebook(page, jupyter, name, *CELLS)
    assert_widgets_live(page)

    started = time.monotonic()
    if how == "kill":
        kill_kernel(jupyter, name)
    elif how == "menu":
        restart_kernel_from_menu(page)
    else:
        restart_kernel(jupyter, name)
    message = LOST_ELSEWHERE if how == "rest" else LOST
    for widget in map(page.locator, WIDGETS):
        expect(widget.locator(".llmscope-error")).to_have_text(message, timeout=LOST_WITHIN_S * 1000)
    lost_after = time.monotonic() - started
    for widget in map(page.locator, WIDGETS):
        expect(widget.locator("input:enabled, textarea:enabled, button:enabled")).to_have_count(0)
        greyed = widget.evaluate("w => [...w.children].filter(c => !c.classList.contains('llmscope-errors'))"
                                 ".map(c => Number(getComputedStyle(c).opacity))")
        assert greyed and max(greyed) < 1, f"{widget}: parts still look live after the kernel went: {greyed}"
    if how == "kill":
        accept_jupyter_dialog(page, "Kernel Restarting")  # the front end's own notice covers the page
    amap, raster = page.locator(WIDGETS[0]), page.locator(WIDGETS[2])
    amap.locator('.llmscope-cell[data-layer="0"][data-head="2"]').click()  # asks the dead kernel for a head
    raster.locator("canvas.llmscope-raster-canvas").click(position={"x": 10, "y": 10})  # for a unit and a token
    page.wait_for_timeout(300)
    for widget in (amap, raster):  # one message, at once: no new request waits
        expect(widget.locator(".llmscope-error")).to_have_text(message)
        expect(widget.locator(".llmscope-status")).not_to_contain_text("…")
    save_shot(page.locator(".widget-vbox"), f"kernel_lost_{jupyter.app}_{how}")

    if how == "rest":
        # JupyterLab forgets the old kernel's comm subshells only on a restart it saw begin; after
        # one made elsewhere it sends widget messages to subshells the new kernel never had.
        reopen_notebook(page, jupyter, name)
    else:
        wait_for_idle_kernel(page, name)
    assert_ran_cleanly(run_all(page))  # the new kernel counts from 1
    assert_widgets_live(page)
    slider = page.locator(WIDGETS[1]).locator('input[type="range"]')
    slider.focus()
    page.keyboard.press("Home")
    expect(seen_by_kernel(page)).to_have_text("kernel: gains={('attn.1', 0): 0.0}", timeout=KERNEL_TIMEOUT_MS)
    expect(page.locator(".llmscope-dist")).to_have_attribute("data-factors", "0", timeout=KERNEL_TIMEOUT_MS)
    print(f"\n{jupyter.app}, kernel {how}: every widget said so {lost_after:.1f} s after the act")
    assert_no_trouble(trouble, offsite_requests)
