"""Widgets in Chromium, timed in the page with ``performance.now()``: what a user waits for.

* AblationPanel on SmolLM2 (1x32 tokens, the units of bench_widgets): a slider move until the
  new distribution is on screen (the first frame after the DOM changed), from the request
  leaving the page (after the 60 ms debounce) and from the slider's input event, against the
  kernel time of that very move (its ``_move`` command, timed in the kernel). Goal: request to
  repaint <= the kernel time + 50 ms, move by move.
* Raster of SmolLM2's mlp.0, 1,000 units x 1,000 tokens of English: the first paint (render to
  the first pixels: the canvas's ``data-first-paint-ms``; the first window comes in the widget's
  state, so no kernel reply is waited for, and the bench checks that none was), its window's
  decode and paint, and a threshold change (slider input to pixels, and to the next frame).
  Goal <= 100 ms each.

JupyterLab and Chromium as in tests/browser (see ../shared/TESTING.md); the load average at the
start is in each case, since the page, the kernel and the server share this machine's cores.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, REPO, serve
from tests.browser.notebook_page import assert_ran_cleanly, open_notebook, put_notebook, run_all

REPEATS = 9
TOKENS = 32
GAINS = [0.0, 0.5, 2.0, 1.5]  # the first slider cycles through these (never all at 1: no cached baseline)
RASTER = (1000, 1000)  # units x tokens
RUNGS = [60, 90, 127, 160]  # threshold slider positions, cycled
PROSE = REPO / "ARCHITECTURE.md"  # varied English, over 1,000 tokens
NOTEBOOK = "bench_browser.ipynb"
KERNEL_TIMES = "kernel_move_ms.txt"  # one line a `_move`, written by the kernel beside the notebook

# Each `_move` timed where it runs, from the message's arrival to its reply sent. (Overriding
# `_move` itself would not do: anywidget 0.11 collects commands along the MRO with the base
# class last, so the base's command is the one it calls.)
SETUP = f"""\
import time
import torch
import llmscope
from llmscope.widgets import AblationPanel, Raster

class TimedPanel(AblationPanel):
    def _handle_custom_msg(self, content, buffers):
        start = time.perf_counter()
        super()._handle_custom_msg(content, buffers)
        if content.get("name") == "_move":
            with open({KERNEL_TIMES!r}, "a") as log:
                print((time.perf_counter() - start) * 1e3, file=log)

model = llmscope.load("smollm2-135m")
ids = torch.randint(100, model.cfg.d_vocab, (1, {TOKENS}), generator=torch.Generator().manual_seed(0))
panel = TimedPanel(model, llmscope.Stimuli.from_ids(model, ids.tolist(), name="bench"),
                   units=[("attn.15", 0), ("attn.20", 3), ("mlp.10", 7)])
prose = model.to_tokens(open({str(PROSE)!r}).read())[0, :{RASTER[1] + 1}].tolist()
assert len(prose) == {RASTER[1] + 1}, len(prose)
rec = llmscope.record(model, llmscope.Stimuli.from_ids(model, [prose], name="prose", n_bos=1), ["mlp.0"],
                      dtype="float32", progress=False)
raster = Raster(rec, "mlp.0", units=list(range({RASTER[0]})))
"""

# One slider move: resolves to when the request left (the status says so, synchronously before
# invoke), when the DOM showed the answer, and the first frame after it, from the input event.
MOVE = """([gain]) => new Promise((resolve, reject) => {
    const root = document.querySelector('.llmscope-ablation');
    const slider = root.querySelector('input[type="range"]');
    const status = root.querySelector('.llmscope-status');
    const dist = root.querySelector('.llmscope-dist');
    const want = [gain, 1, 1].join(',');
    let sent = null;
    const watchStatus = new MutationObserver(() => {
        if (sent === null && status.textContent.startsWith('running')) sent = performance.now();
    });
    const watchDist = new MutationObserver(() => {
        if (dist.dataset.factors !== want) return;
        const shown = performance.now();
        watchDist.disconnect(); watchStatus.disconnect();
        requestAnimationFrame(() => {  // the frame that paints the change; a message runs after it
            const channel = new MessageChannel();
            channel.port1.onmessage = () => resolve({ sent: sent - start, shown: shown - start,
                                                      painted: performance.now() - start });
            channel.port2.postMessage(null);
        });
    });
    watchStatus.observe(status, { childList: true, characterData: true, subtree: true });
    watchDist.observe(dist, { attributes: true, attributeFilter: ['data-factors'] });
    setTimeout(() => reject(new Error(`no answer for gain ${gain} within 60 s`)), 60_000);
    const start = performance.now();
    slider.value = String(gain);
    slider.dispatchEvent(new Event('input', { bubbles: true }));
})"""

# One threshold step: the raster repaints inside the input handler (no kernel round trip).
SLIDE = """([rung]) => new Promise((resolve) => {
    const slider = document.querySelector('.llmscope-raster input.llmscope-threshold');
    const canvas = document.querySelector('canvas.llmscope-raster-canvas');
    const start = performance.now();
    slider.value = String(rung);
    slider.dispatchEvent(new Event('input', { bubbles: true }));
    const pixels = performance.now() - start;
    if (canvas.dataset.rung !== String(rung)) throw new Error(`the canvas is at rung ${canvas.dataset.rung}`);
    requestAnimationFrame(() => {
        const channel = new MessageChannel();
        channel.port1.onmessage = () => resolve({ pixels, frame: performance.now() - start });
        channel.port2.postMessage(null);
    });
})"""


def _row(benchmark: str, case: str, value: float, unit: str = "ms (median)", goal: str = "") -> dict:
    return dict(benchmark=benchmark, case=case, value=value, unit=unit, goal=goal)


def ablation_in_page(page: Page, kernel_log: Path, load: float) -> list[dict]:
    page.locator(".llmscope-ablation .llmscope-dist[data-factors='1,1,1']").wait_for(timeout=60_000)
    moves = [page.evaluate(MOVE, [GAINS[i % len(GAINS)]]) for i in range(REPEATS)]
    kernel = [float(line) for line in kernel_log.read_text().split()]
    if len(kernel) != len(moves):
        raise RuntimeError(f"{len(moves)} moves in the page, {len(kernel)} _move commands in the kernel")
    request_to_paint = [m["painted"] - m["sent"] for m in moves]
    case = f"smollm2-135m, 1x{TOKENS}, 3 units; load {load:.1f}"
    return [
        _row("AblationPanel move, kernel (_move)", case, statistics.median(kernel)),
        _row("AblationPanel move, page: request to repaint", case, statistics.median(request_to_paint)),
        _row("AblationPanel move, page: input to repaint (60 ms debounce in)", case,
             statistics.median(m["painted"] for m in moves)),
        _row("AblationPanel move, page: request to repaint - kernel", case,
             statistics.median(p - k for p, k in zip(request_to_paint, kernel)), goal="<= 50"),
    ]


def raster_in_page(page: Page, load: float) -> list[dict]:
    canvas = page.locator("canvas.llmscope-raster-canvas")
    page.locator(f"canvas.llmscope-raster-canvas[data-view='0,{RASTER[0]},0,{RASTER[1]}']").wait_for(timeout=120_000)
    first_paint = float(canvas.get_attribute("data-first-paint-ms"))
    window = float(canvas.get_attribute("data-window-ms"))
    if canvas.get_attribute("data-round-trip-ms") is not None:
        raise RuntimeError("the raster's first window came by request, not with the widget's state")
    steps = [page.evaluate(SLIDE, [RUNGS[i % len(RUNGS)]]) for i in range(REPEATS)]
    case = f"smollm2-135m mlp.0, {RASTER[0]} units x {RASTER[1]} tokens; load {load:.1f}"
    return [
        _row("Raster first paint (render to pixels, window in the state)", case, first_paint, "ms", "<= 100"),
        _row("Raster first window, state to pixels (decode, paint)", case, window, "ms"),
        _row("Raster threshold change, input to pixels", case, statistics.median(s["pixels"] for s in steps),
             goal="<= 100"),
        _row("Raster threshold change, input to next frame", case, statistics.median(s["frame"] for s in steps)),
    ]


def run() -> list[dict]:
    with tempfile.TemporaryDirectory() as home, serve("lab", Path(home)) as jupyter, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            load = os.getloadavg()[0]
            put_notebook(jupyter, NOTEBOOK, SETUP, "panel", "raster")
            open_notebook(page, jupyter, NOTEBOOK)
            assert_ran_cleanly(run_all(page))
            return ablation_in_page(page, Path(home) / "notebooks" / KERNEL_TIMES, load) + raster_in_page(page, load)
        finally:
            browser.close()
