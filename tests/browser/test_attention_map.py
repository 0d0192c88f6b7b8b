"""AttentionMap in real JupyterLab and Chromium, offline: click a head, use the keys, hover a
token, type a prompt; the kernel sees each act and the page redraws. Hostile text stays text,
in JupyterLab and in Notebook 7."""

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
from llmscope.widgets import AttentionMap

model = llmscope.load("grammar-2l")
"""
# A label the kernel rewrites whenever the widget's Python state changes: what the kernel saw.
SEEN = """\
seen = ipywidgets.Label()
def show_state(change=None):
    seen.value = f"kernel: focus={amap.focus} prompt={amap.prompt!r} error={amap.last_error!r}"
amap.observe(show_state, names=["focus", "prompt", "last_error"])
show_state()
ipywidgets.VBox([amap, seen])
"""
LIVE_CELL = 'amap = AttentionMap(model, "the dog runs . the dog runs .")\n' + SEEN
HOSTILE = ("<img src=x onerror=alert(1)>", "<script>window.__pwned=2</script>")
HOSTILE_CELL = f"""\
stim = llmscope.Stimuli.from_ids(model, [[1, 973, 4, 973, 4]], name="hostile", n_bos=1)
stim.tokens["text"] = ["<bos>", {HOSTILE[0]!r}, {HOSTILE[1]!r}, "the", "dog"]
amap = AttentionMap(model, stim)
""" + SEEN


def heatmap_pixels(page: Page) -> str:
    return page.locator("canvas.llmscope-heatmap").evaluate("c => c.toDataURL()")


def test_attention_map_is_live(page: Page, jupyter: "Jupyter", offsite_requests: list[str]) -> None:
    errors, dialogs = watch_for_trouble(page, jupyter)
    put_notebook(jupyter, "attention_map.ipynb", SETUP, LIVE_CELL)
    open_notebook(page, jupyter, "attention_map.ipynb")
    assert_ran_cleanly(run_all(page))

    widget = page.locator(".llmscope-attention")
    seen = page.locator(".widget-label", has_text="kernel: ")
    heatmap = widget.locator("canvas.llmscope-heatmap")
    expect(widget.locator(".llmscope-cell")).to_have_count(8, timeout=RENDER_TIMEOUT_MS)  # 2 layers x 4 heads
    expect(heatmap).to_have_attribute("data-focus", "1,0", timeout=RENDER_TIMEOUT_MS)  # the induction head
    expect(widget.locator(".llmscope-cell.is-focused")).to_have_attribute("aria-label", "layer 1, head 0: "
                                                                          "previous-token score .00, induction score .90")
    before = heatmap_pixels(page)

    widget.locator('.llmscope-cell[data-layer="0"][data-head="2"]').click()  # the previous-token head
    expect(seen).to_contain_text("focus=(0, 2)", timeout=KERNEL_TIMEOUT_MS)
    expect(heatmap).to_have_attribute("data-focus", "0,2", timeout=KERNEL_TIMEOUT_MS)
    clicked = heatmap_pixels(page)
    assert clicked != before, "the focused heatmap did not change when another head was picked"

    page.keyboard.press("ArrowRight")  # the clicked cell has the keyboard focus: arrows move the head
    expect(seen).to_contain_text("focus=(0, 3)", timeout=KERNEL_TIMEOUT_MS)
    expect(widget.locator('.llmscope-cell[data-layer="0"][data-head="3"]')).to_be_focused()
    page.keyboard.press("ArrowLeft")
    expect(heatmap).to_have_attribute("data-focus", "0,2", timeout=KERNEL_TIMEOUT_MS)

    tokens = widget.locator(".llmscope-token")
    expect(tokens).to_have_count(9)
    tokens.nth(6).hover()  # the second "dog": the previous-token head looks at "the" before it
    expect(tokens.nth(6)).to_have_class("llmscope-token is-active")
    expect(widget.locator(".llmscope-readout")).to_contain_text('"dog" (position 6) attends most to "the" (position 5)')
    shaded = tokens.evaluate_all("spans => spans.map(s => s.style.backgroundColor)")
    blue, orange = "rgba(33, 113, 181,", "rgba(217, 72, 1,"  # where it attends / what attends to it
    alpha = [float(c.rsplit(",", 1)[1].rstrip(")")) for c in shaded]
    assert all(c.startswith(blue) for c in shaded[:7]) and all(c.startswith(orange) for c in shaded[7:]), shaded
    assert max(range(7), key=alpha.__getitem__) == 5, f"the darkest blue is not on 'the': {shaded}"
    assert alpha[7] > alpha[8], f"'runs' right after 'dog' should attend to it most: {shaded}"
    tokens.nth(6).focus()
    page.keyboard.press("ArrowRight")  # the strip moves with the keys too
    expect(tokens.nth(7)).to_have_class("llmscope-token is-active")

    prompt = widget.locator("textarea.llmscope-prompt")
    expect(prompt).to_have_value("the dog runs . the dog runs .")
    prompt.fill("the cat sleeps . the cat sleeps . the cat")
    expect(seen).to_contain_text("prompt='the cat sleeps . the cat sleeps . the cat'", timeout=KERNEL_TIMEOUT_MS)
    expect(tokens).to_have_count(11, timeout=KERNEL_TIMEOUT_MS)
    expect(tokens.nth(2)).to_have_text("cat")
    expect(heatmap).not_to_have_attribute("data-version", "1", timeout=KERNEL_TIMEOUT_MS)
    assert heatmap_pixels(page) != clicked, "the heatmap was not redrawn for the new prompt"

    prompt.fill("   ")
    errors_box = widget.locator(".llmscope-errors")
    expect(errors_box).to_contain_text("PromptError: empty prompt", timeout=KERNEL_TIMEOUT_MS)
    expect(seen).to_contain_text("prompt='the cat sleeps . the cat sleeps . the cat'")  # kept
    expect(seen).to_contain_text("error='PromptError: empty prompt")
    expect(tokens).to_have_count(11)
    prompt.fill("the dog runs .")
    expect(errors_box).to_be_hidden(timeout=KERNEL_TIMEOUT_MS)
    expect(tokens).to_have_count(5, timeout=KERNEL_TIMEOUT_MS)

    widget.scroll_into_view_if_needed()
    tokens.nth(4).hover()
    ARTIFACTS.mkdir(exist_ok=True)
    widget.screenshot(path=ARTIFACTS / "attention_map_widget.png")
    assert errors == [] and dialogs == [], f"page errors {errors}, dialogs {dialogs}"
    assert offsite_requests == [], f"the page tried to reach the network: {offsite_requests}"


@FRONTENDS
def test_attention_map_shows_hostile_text_literally(page: Page, jupyter: "Jupyter", offsite_requests: list[str]) -> None:
    """The widget renders, a typed prompt reaches the kernel, and markup in tokens stays text."""
    errors, dialogs = watch_for_trouble(page, jupyter)
    put_notebook(jupyter, "attention_hostile.ipynb", SETUP, HOSTILE_CELL)
    open_notebook(page, jupyter, "attention_hostile.ipynb")
    assert_ran_cleanly(run_all(page))

    widget = page.locator(".llmscope-attention")
    tokens = widget.locator(".llmscope-token")
    expect(tokens).to_have_count(5, timeout=RENDER_TIMEOUT_MS)
    for i, text in enumerate(HOSTILE, start=1):
        expect(tokens.nth(i)).to_have_text(text)
        expect(tokens.nth(i)).to_be_visible()
    tokens.nth(2).hover()
    expect(widget.locator(".llmscope-readout")).to_contain_text(HOSTILE[1])
    ARTIFACTS.mkdir(exist_ok=True)
    widget.screenshot(path=ARTIFACTS / f"attention_map_hostile_{jupyter.app}.png")

    typed = '<img src=x onerror="window.__pwned=1"> the dog'
    widget.locator("textarea.llmscope-prompt").fill(typed)
    expect(page.locator(".widget-label", has_text="kernel: ")).to_contain_text(f"prompt={typed!r}",
                                                                             timeout=KERNEL_TIMEOUT_MS)
    expect(widget.locator("textarea.llmscope-prompt")).to_have_value(typed)
    expect(widget.locator("img, script")).to_have_count(0)
    page.wait_for_timeout(500)  # time enough for a broken image to fire onerror, had one been made
    assert page.evaluate("() => window.__pwned") is None, "text ran as code in the page"
    assert errors == [] and dialogs == [], f"page errors {errors}, dialogs {dialogs}"
    assert offsite_requests == [], f"the page tried to reach the network: {offsite_requests}"
