"""AttentionMap in real JupyterLab and Chromium, offline: click a head, use the keys, hover a
token, type a prompt; the kernel sees each act and the page redraws. In JupyterLab and in
Notebook 7, on SmolLM2: the focused head is in view, the keys move the focus and the token
strip, and a typed hostile prompt stays text. One long prompt (the only one in the suite)
streams layer by layer, is cancelled, and draws its previous-token head visibly when
squeezed onto the canvas."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from playwright.sync_api import Locator, Page, expect

from tests.browser.conftest import FRONTENDS, REPO
from tests.browser.notebook_page import assert_no_trouble, kernel_label, run_notebook, save_shot, seen_by_kernel

if TYPE_CHECKING:
    from tests.browser.conftest import Jupyter

RENDER_TIMEOUT_MS = 30_000
KERNEL_TIMEOUT_MS = 15_000
LONG_RUN_TIMEOUT_MS = 300_000  # SmolLM2 on 1,000 tokens: 20-60 s on two loaded cores
SETUP = """\
import ipywidgets
import llmscope
from llmscope.widgets import AttentionMap

model = llmscope.load("{model}")
"""
ORGANISM, SMOL = SETUP.format(model="grammar-2l"), SETUP.format(model="smollm2-135m")
SEEN = kernel_label("amap", "focus", "prompt", "last_error")
LIVE_CELL = 'amap = AttentionMap(model, "the dog runs . the dog runs .")\n' + SEEN
SMOL_CELL = 'amap = AttentionMap(model, "The cat sat on the mat. The cat sat on the mat.")\n' + SEEN
SHORT_CELL = 'amap = AttentionMap(model, "Hello there.")\n' + SEEN
HOSTILE_PROMPT = '<img src=x onerror="window.__pwned=1"> the dog'
LONG_TOKENS = 1_000  # more than the focused head's 360 pixels: it must be pooled to show


def heatmap_pixels(page: Page) -> str:
    return page.locator("canvas.llmscope-heatmap").evaluate("c => c.toDataURL()")


def in_view(inner: Locator, outer: Locator) -> bool:
    """Whether ``inner`` lies wholly inside ``outer`` on screen (a scrolled box's visible part)."""
    a, b = inner.bounding_box(), outer.bounding_box()
    return (a is not None and b is not None and a["y"] >= b["y"] - 1 and a["y"] + a["height"] <= b["y"] + b["height"] + 1
            and a["x"] >= b["x"] - 1 and a["x"] + a["width"] <= b["x"] + b["width"] + 1)


def test_attention_map_is_live(page: Page, jupyter: "Jupyter", offsite_requests: list[str]) -> None:
    trouble = run_notebook(page, jupyter, "attention_map.ipynb", ORGANISM, LIVE_CELL)
    widget = page.locator(".llmscope-attention")
    seen = seen_by_kernel(page)
    heatmap = widget.locator("canvas.llmscope-heatmap")
    expect(widget.locator(".llmscope-cell")).to_have_count(8, timeout=RENDER_TIMEOUT_MS)  # 2 layers x 4 heads
    expect(heatmap).to_have_attribute("data-focus", "1,0", timeout=RENDER_TIMEOUT_MS)  # the induction head
    expect(widget.locator(".llmscope-cell.is-focused")).to_have_attribute("aria-label", "layer 1, head 0: "
                                                                          "previous-token score .00, induction score .90")
    expect(widget.locator(".llmscope-run")).to_be_hidden()  # no run going: no progress, no cancel
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
    expect(seen).to_contain_text("last_error='PromptError: empty prompt")
    expect(tokens).to_have_count(11)
    prompt.fill("the dog runs .")
    expect(errors_box).to_be_hidden(timeout=KERNEL_TIMEOUT_MS)  # the stale error goes with the new run
    expect(tokens).to_have_count(5, timeout=KERNEL_TIMEOUT_MS)

    tokens.nth(4).hover()
    save_shot(widget, "attention_map_widget")
    assert_no_trouble(trouble, offsite_requests)


COLOURED_CELL = f"""\
from llmscope.analysis.attribution import screen
bat = llmscope.battery(model, n_docs=2, n_pairs=8, behaviours=["copying", "agreement"])
s = screen(model, bat, ["attn.0", "attn.1"], progress=False)
amap = AttentionMap(model, "the dog runs . the dog runs .").colour_by(s, "copying")
amap.observe(lambda change: amap.colour_by(s.heads("agreement", "estimate"), {HOSTILE_PROMPT!r}, "estimate"), "focus")
""" + SEEN


@FRONTENDS
def test_heads_are_coloured_by_a_screen_and_follow_python(page: Page, jupyter: "Jupyter",
                                                           offsite_requests: list[str]) -> None:
    """colour_by(screen, "copying"): a bar under every thumbnail, the induction head's full, the
    share in each cell's label; a new colouring set from Python (here on a focus moved with the
    keys) redraws the bars, and its behaviour's name, hostile, stays text."""
    trouble = run_notebook(page, jupyter, "attention_colour.ipynb", ORGANISM, COLOURED_CELL)
    widget = page.locator(".llmscope-attention")
    seen = seen_by_kernel(page)
    expect(widget.locator(".llmscope-cell")).to_have_count(8, timeout=RENDER_TIMEOUT_MS)
    induction = widget.locator('.llmscope-cell[data-layer="1"][data-head="0"]')
    expect(induction).to_have_attribute("aria-label", re.compile(r"induction score \.90; AtP score for copying "
                                                                 r"1\.00 of the largest$"), timeout=RENDER_TIMEOUT_MS)
    bars = widget.locator(".llmscope-cell-bar")
    expect(bars).to_have_count(8)
    assert all(bars.evaluate_all("bs => bs.map(b => !b.hidden && b.getBoundingClientRect().height > 0)"))
    fills = bars.evaluate_all("bs => bs.map(b => b.firstChild.style.width)")
    assert fills[4] == "100%" and all(0 <= int(w.rstrip("%")) < 100 for k, w in enumerate(fills) if k != 4), fills
    legend = widget.locator(".llmscope-attribution")
    expect(legend).to_have_text("bars: AtP score for copying, each head's share of the largest (dashed: not screened)")
    save_shot(widget, f"attention_map_coloured_{jupyter.app}")

    induction.click()  # then the keys move the focus; Python recolours on a focus change
    expect(seen).to_contain_text("focus=(1, 0)", timeout=KERNEL_TIMEOUT_MS)
    for key in ("ArrowUp", "ArrowRight", "ArrowRight"):
        page.keyboard.press(key)
    expect(seen).to_contain_text("focus=(0, 2)", timeout=KERNEL_TIMEOUT_MS)
    expect(legend).to_contain_text(f"bars: estimate for {HOSTILE_PROMPT}, each head's share of the largest (orange: "
                                   "a lesion of the head harms the behaviour; blue: it helps;", timeout=KERNEL_TIMEOUT_MS)
    expect(induction).to_have_attribute("aria-label", re.compile(f"estimate for {re.escape(HOSTILE_PROMPT)} "
                                                                 r"[−.0-9]+ of the largest$"))
    assert bars.evaluate_all("bs => bs.map(b => b.firstChild.style.width)") != fills, "the bars were not redrawn"
    expect(widget.locator("img, script")).to_have_count(0)
    assert page.evaluate("() => window.__pwned") is None, "text ran as code in the page"
    save_shot(widget, f"attention_map_coloured_estimate_{jupyter.app}")
    assert_no_trouble(trouble, offsite_requests)


@FRONTENDS
def test_attention_map_keys_and_hostile_text(page: Page, jupyter: "Jupyter", offsite_requests: list[str]) -> None:
    """On SmolLM2's 30 x 9 heads: the first focused head is scrolled into view; the arrow keys
    move the focus (the kernel sees it) and the token strip; a typed prompt with markup reaches
    the kernel and shows as literal tokens."""
    trouble = run_notebook(page, jupyter, "attention_keys.ipynb", SMOL, SMOL_CELL)
    widget = page.locator(".llmscope-attention")
    seen = seen_by_kernel(page)
    grid = widget.locator(".llmscope-grid")
    expect(widget.locator(".llmscope-cell")).to_have_count(270, timeout=RENDER_TIMEOUT_MS)
    heatmap = widget.locator("canvas.llmscope-heatmap")
    expect(heatmap).to_have_attribute("data-focus", re.compile(r"\d+,\d+"), timeout=RENDER_TIMEOUT_MS)
    layer, head = map(int, heatmap.get_attribute("data-focus").split(","))
    assert layer > 8, f"the best induction head is in layer {layer}: the grid's first rows, no scrolling to test"
    focused = widget.locator(".llmscope-cell.is-focused")
    assert in_view(focused, grid), "the first focused head is outside the visible head grid"

    focused.click()
    page.keyboard.press("Home")
    expect(seen).to_contain_text(f"focus=({layer}, 0)", timeout=KERNEL_TIMEOUT_MS)
    page.keyboard.press("ArrowRight")
    expect(seen).to_contain_text(f"focus=({layer}, 1)", timeout=KERNEL_TIMEOUT_MS)
    page.keyboard.press("ArrowUp")
    expect(seen).to_contain_text(f"focus=({layer - 1}, 1)", timeout=KERNEL_TIMEOUT_MS)
    page.keyboard.press("PageUp")
    expect(seen).to_contain_text("focus=(0, 1)", timeout=KERNEL_TIMEOUT_MS)
    expect(widget.locator('.llmscope-cell[data-layer="0"][data-head="1"]')).to_be_focused()
    assert in_view(focused, grid), "the head moved to with the keys is outside the visible grid"
    expect(heatmap).to_have_attribute("data-focus", "0,1", timeout=KERNEL_TIMEOUT_MS)

    tokens = widget.locator(".llmscope-token")
    tokens.nth(3).click()
    expect(tokens.nth(3)).to_have_class("llmscope-token is-active")
    page.keyboard.press("ArrowRight")  # along the strip, in the page (no kernel state)
    expect(tokens.nth(4)).to_have_class("llmscope-token is-active")
    expect(tokens.nth(4)).to_be_focused()
    expect(widget.locator(".llmscope-readout")).to_contain_text("(position 4) attends most to")

    box = widget.locator("textarea.llmscope-prompt")
    box.fill(HOSTILE_PROMPT)
    expect(seen).to_contain_text(f"prompt={HOSTILE_PROMPT!r}", timeout=KERNEL_TIMEOUT_MS)
    expect(box).to_have_value(HOSTILE_PROMPT)
    expect(widget.locator(".llmscope-grid")).to_have_attribute("data-done", "30", timeout=KERNEL_TIMEOUT_MS)
    shown = tokens.evaluate_all("spans => spans.map(s => s.textContent)")
    assert shown[0] == "<|im_start|>", shown
    assert "".join(shown[1:]).replace("␣", " ") == HOSTILE_PROMPT, shown  # SmolLM2's tokens, each as text
    expect(widget.locator("img, script")).to_have_count(0)
    page.wait_for_timeout(500)  # time enough for a broken image to fire onerror, had one been made
    assert page.evaluate("() => window.__pwned") is None, "text ran as code in the page"
    save_shot(widget, f"attention_map_keys_{jupyter.app}")
    assert_no_trouble(trouble, offsite_requests)


def test_a_long_prompt_streams_stops_when_cancelled_and_shows_its_previous_token_head(
        page: Page, jupyter: "Jupyter", offsite_requests: list[str]) -> None:
    trouble = run_notebook(page, jupyter, "attention_long.ipynb", SMOL, SHORT_CELL)
    widget = page.locator(".llmscope-attention")
    seen = seen_by_kernel(page)
    grid, tokens = widget.locator(".llmscope-grid"), widget.locator(".llmscope-token")
    expect(grid).to_have_attribute("data-done", "30", timeout=RENDER_TIMEOUT_MS)
    prose = (REPO / "ARCHITECTURE.md").read_text()
    box, cancel = widget.locator("textarea.llmscope-prompt"), widget.locator(".llmscope-cancel")

    expect(tokens).to_have_count(4)
    box.fill(prose[:3_000])  # a run to cancel: its old tokens go at once, its new ones come before its layers
    expect(cancel).to_be_visible(timeout=KERNEL_TIMEOUT_MS)
    page.wait_for_function("() => document.querySelectorAll('.llmscope-attention .llmscope-token').length > 500",
                           timeout=KERNEL_TIMEOUT_MS)
    assert int(grid.get_attribute("data-done")) < 30, "the new tokens came only with the whole run"
    page.wait_for_function(  # two layers in (a poll can step over any one value, so wait for >= 2)
        "() => Number(document.querySelector('.llmscope-attention .llmscope-grid').dataset.done) >= 2",
        timeout=LONG_RUN_TIMEOUT_MS)
    assert int(grid.get_attribute("data-done")) < 30, "the run finished before it could be cancelled"
    cancel.click()
    expect(widget.locator(".llmscope-status")).to_contain_text("cancelled after", timeout=LONG_RUN_TIMEOUT_MS)
    expect(seen).to_contain_text("prompt='Hello there.'")  # the kernel kept the prompt it had
    expect(tokens).to_have_count(4, timeout=KERNEL_TIMEOUT_MS)  # and the page shows it again
    expect(cancel).to_be_hidden()

    text = prose[:4_500]
    box.fill(text)
    layers_seen = set()
    progress = widget.locator("progress.llmscope-progress")
    expect(progress).to_be_visible(timeout=KERNEL_TIMEOUT_MS)
    while (done := int(grid.get_attribute("data-done"))) < 30:  # thumbnails arrive layer by layer
        layers_seen.add(done)
        n_tokens = tokens.count()
        page.wait_for_timeout(250)
        if len(layers_seen) > 1 and n_tokens > LONG_TOKENS:
            break
    assert len(layers_seen - {0, 30}) >= 1, f"no partial grid was ever shown: {layers_seen}"
    assert tokens.count() > LONG_TOKENS, "the new prompt's tokens did not come before its last layer"
    expect(seen).to_contain_text(f"prompt={text!r}"[:40], timeout=LONG_RUN_TIMEOUT_MS)
    expect(grid).to_have_attribute("data-done", "30")
    expect(cancel).to_be_hidden()

    labels = widget.locator(".llmscope-cell").evaluate_all("cells => cells.map(c => c.getAttribute('aria-label'))")
    scores = [float(label.split("previous-token score ")[1].split(",")[0].replace("–", "nan")) for label in labels]
    best = max(range(len(scores)), key=lambda i: scores[i] if scores[i] == scores[i] else -1)
    assert scores[best] > 0.5, f"no previous-token head on this prompt: {max(scores)}"
    widget.locator(".llmscope-cell").nth(best).click()
    heatmap = widget.locator("canvas.llmscope-heatmap")
    expect(heatmap).to_have_attribute("data-focus", f"{best // 9},{best % 9}", timeout=KERNEL_TIMEOUT_MS)
    # the pattern has n > 360 rows: pooled, every pixel row shows its dark cell by the diagonal
    dark = heatmap.evaluate("""c => {
        const { data } = c.getContext('2d').getImageData(0, 0, c.width, c.height);
        const rows = [];
        for (let y = 1; y < c.height; y++) {
            let darkest = 255;
            for (const x of [y - 1, y]) darkest = Math.min(darkest, data[(y * c.width + x) * 4]);
            rows.push(darkest);
        }
        return { side: c.width, rows };
    }""")
    assert dark["side"] < tokens.count(), "the focused head was not pooled onto the canvas"
    visible = sum(v < 128 for v in dark["rows"]) / len(dark["rows"])
    assert visible > 0.9, f"the previous-token head's diagonal shows in only {visible:.0%} of the pixel rows"
    save_shot(widget, "attention_map_long_prompt")
    assert_no_trouble(trouble, offsite_requests)
