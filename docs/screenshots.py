"""Regenerate the README's widget screenshots, ``docs/img/*.png``, in a real JupyterLab.

Run on demand, not in ``make test`` (it loads SmolLM2 and takes a minute or two), from the
repository root with the project's Python:

    python docs/screenshots.py

JupyterLab and Chromium start as in the browser tests (tests/browser/conftest.py), offline.
Each widget is shown at its best on a meaningful example, driven as a user would, and cropped
to the widget:

* ``attention_map.png``: SmolLM2 on a sentence said twice; the widget focuses its best
  induction head, and the first token of the repeat whose strongest attention goes to the
  first half (not to BOS, the usual sink) is hovered.
* ``raster.png``: tutorial 04's raster (the organism's mlp.0, sorted by part of speech), its
  most selective unit selected from Python: its tuning curve and top examples show.
* ``ablation_panel.png``: the organism's best induction head lesioned and its best
  previous-token head doubled, from the keyboard, on a prompt whose next word they predict.

Look at each image before committing it.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, serve  # noqa: E402
from tests.browser.notebook_page import assert_ran_cleanly, open_notebook, put_notebook, run_all  # noqa: E402

OUT = REPO / "docs" / "img"
TIMEOUT_MS = 120_000
REPEATED = ("The lighthouse keeper on Skellig Rock counted eleven ships before the storm. "
            "The lighthouse keeper on Skellig Rock counted eleven ships before the storm.")
CELLS = ("""\
import pandas as pd
import llmscope
from llmscope import AblationPanel, AttentionMap, Raster, localize_heads, record, tuning
from llmscope.stimuli import grammar

organism = llmscope.load("grammar-2l")
smol = llmscope.load("smollm2-135m")
stim = grammar(organism, n_docs=32, seed=5)
rec = record(organism, stim, ["mlp.0"], progress=False)
""", f"""\
AttentionMap(smol, {REPEATED!r})
""", """\
raster = Raster(rec, "mlp.0", sort_by="pos_tag", threshold=2.5)
raster
""", """\
raster.selected = tuning(rec, "mlp.0", "pos_tag", progress=False).top(1)
""", """\
heads = localize_heads(organism, stim, progress=False)
AblationPanel(organism, "the dog runs . the cats see the dog . the dog",
              units=pd.concat([heads.top(1, by="induction"), heads.top(1, by="previous_token")]))
""")


def attention_map(page: Page) -> None:
    widget = page.locator(".llmscope-attention")
    expect(widget.locator("canvas.llmscope-heatmap")).to_have_attribute("data-focus", re.compile(r"^\d"),
                                                                        timeout=TIMEOUT_MS)
    tokens = widget.locator(".llmscope-token")
    texts = tokens.evaluate_all("spans => spans.map(s => s.textContent)")
    widget.scroll_into_view_if_needed()
    readout = widget.locator(".llmscope-readout")
    for i in range(texts.index("␣keeper", 5), len(texts)):  # the first token of the repeat that attends most
        tokens.nth(i).hover()                               # to a token of the first half, not to BOS
        expect(readout).to_contain_text("attends most to")
        if "<|im_start|>" not in readout.inner_text().split("attends most to")[1]:
            break
    widget.screenshot(path=OUT / "attention_map.png")


def raster(page: Page) -> None:
    widget = page.locator(".llmscope-raster")
    expect(widget.locator(".llmscope-raster-bar")).to_have_count(9, timeout=TIMEOUT_MS)
    expect(widget.locator(".llmscope-raster-examples li")).to_have_count(8)
    widget.scroll_into_view_if_needed()
    widget.screenshot(path=OUT / "raster.png")


def ablation_panel(page: Page) -> None:
    widget = page.locator(".llmscope-ablation")
    sliders = widget.locator('input[type="range"]')
    expect(sliders).to_have_count(2, timeout=TIMEOUT_MS)
    sliders.nth(0).focus()
    page.keyboard.press("Home")  # the induction head: lesioned
    sliders.nth(1).focus()
    page.keyboard.press("End")  # the previous-token head: doubled
    expect(widget.locator(".llmscope-dist")).to_have_attribute("data-factors", "0,2", timeout=TIMEOUT_MS)
    widget.scroll_into_view_if_needed()
    page.evaluate("() => document.activeElement.blur()")  # no focus ring in the picture
    widget.screenshot(path=OUT / "ablation_panel.png")


def main() -> None:
    with tempfile.TemporaryDirectory() as home, serve("lab", Path(home)) as jupyter, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            put_notebook(jupyter, "screenshots.ipynb", *CELLS)
            open_notebook(page, jupyter, "screenshots.ipynb")
            assert_ran_cleanly(run_all(page))
            for shoot in (attention_map, raster, ablation_panel):
                shoot(page)
                print(f"wrote {OUT / shoot.__name__}.png")
        finally:
            browser.close()


if __name__ == "__main__":
    main()
