// @ts-check
// Raster: units x tokens spikes on a canvas, thresholded in the page. The kernel sends each
// cell as a byte code, how many rungs of its unit's threshold ladder the response exceeds;
// at slider rung k a cell spikes exactly where code > k, so moving the slider only rebuilds a
// 256-entry colour table and repaints (and counts spikes from the window's code histogram,
// which the kernel sends with the codes). When the window has more cells than the canvas has
// pixels, each pixel shows the largest code of its cells (heatmap.js): a pixel is dark when
// any of its cells spikes, so no spike is ever hidden by the scaling.
// The page holds only the visible window. The first one comes in the widget's state, with the
// model, so the first paint asks the kernel for nothing; the page asks for another window when
// the user scrolls or zooms. A click on a cell selects its unit (the kernel sends its tuning
// curve and top examples) and its token (the kernel sends its context). Around the canvas:
// the bands of the `sort_by` categories and unit ids (as ticks where they fit, and under the
// pointer), the selected units marked, and a token axis.
//
// Kernel commands (llmscope/widgets/raster.py): `_window` (codes of a window, its unit indices
// and token texts), `_unit` (tuning curve, top examples), `_token` (context). Traits: `_meta`
// (sizes, rungs, ladder), `_first_window` (a `_window` answer for the first view, `{}` once it
// moved), `rung` (the slider), `selection` (unit indices), `view` ([u0, u1, t0, t1]),
// `version` (bumped by the kernel when the raster changed: ask again).
//
// Timings on the canvas, for the browser benchmark (ms, performance.now()): data-first-paint-ms
// (render to the first pixels, a request included if the state's window was not the view's),
// data-round-trip-ms (the last window's request to its reply; absent while the window on show
// came with the state), data-window-ms (that reply, or the state's window, to pixels: decode
// and paint), data-paint-ms (the last paint: pixels and spike count, as a slider step costs).

import { MAPS, pack } from "./colormap.js";
import { h } from "./dom.js";
import { cellAt, devicePixels, drawHeatmap, fillPixels, poolMax } from "./heatmap.js";
import { View, mount } from "./mount.js";
import { displayText } from "./tokens.js";
import { decodeArray } from "./wire.js";

const WINDOW_DEBOUNCE_MS = 60;
const SAVE_DEBOUNCE_MS = 150;
const CLICK_DEBOUNCE_MS = 120;
const MIN_TOKENS = 16;
const UNIT_TICK_PX = 14;  // unit ids at least this far apart
const TOKEN_TICK_PX = 64;  // token positions at least this far apart
const TOKEN_TEXT_PX = 30;  // every token's text under its column once a column is this wide
const SPIKE = pack(...MAPS.blues[4]);
/** @type {[number, number, number]} */
const SHADE = [247, 251, 255];  // below threshold: white, greying faintly as the response nears it

/**
 * The colour table at `rung`: code c spikes (dark) when c > rung; below, a faint grey that
 * deepens as c nears the threshold, so near-misses show.
 * @param {number} rung
 * @returns {Uint32Array}
 */
export function spikeTable(rung) {
  const table = new Uint32Array(256);
  for (let c = 0; c < 256; c++) {
    if (c > rung) table[c] = SPIKE;
    else {
      const f = rung > 0 ? 1 - 0.18 * (c / rung) : 1;
      const [r, g, b] = SHADE.map((v) => Math.round(v * f));
      table[c] = pack(r, g, b);
    }
  }
  return table;
}

/**
 * The spikes at `rung` (cells whose code is above it) from a window's histogram (how many of
 * its cells hold each code, `[256]`): 256 steps, whatever the window's size.
 * @param {Int32Array} counts @param {number} rung
 */
export function spikesAbove(counts, rung) {
  let total = 0;
  for (let c = rung + 1; c < counts.length; c++) total += counts[c];
  return total;
}

let warmed = false;

/**
 * Run the per-cell loops (poolMax, fillPixels) on 64k cells a few times, once per page, while
 * a window is on its way from the kernel: V8 compiles a loop only after it has run a while,
 * so a paint of 1e6 cold cells would otherwise spend most of its time in the interpreter
 * (about half, in node). Never while a window is at hand: it would only delay its paint.
 */
export function warmUp() {
  if (warmed) return;
  warmed = true;
  const codes = new Uint8Array(1 << 16);
  const pixels = new Uint32Array(codes.length);
  const table = spikeTable(0);
  for (let k = 0; k < 4; k++) {
    fillPixels(pixels, codes, table, 256);
    poolMax(codes, 256, 256, 100, 100);
  }
}

/**
 * Whether `window` (a `_window` answer, or the state's `_first_window`) shows `view` at the
 * kernel's `version`: a first window the view has left, or an empty one, is not used.
 * @param {any} window @param {number[]} view @param {number} version
 */
export function shows(window, [u0, u1, t0, t1], version) {
  const shape = window?.codes?.shape;
  return Array.isArray(shape) && window.version === version && window.u0 === u0 && window.t0 === t0 &&
         shape[0] === u1 - u0 && shape[1] === t1 - t0;
}

/**
 * The view `[u0, u1, t0, t1]` after an action, clamped to `nUnits` x `nTokens`: "up"/"down"
 * scroll rows by a page, "left"/"right" tokens by half a view, "in"/"out" halve or double
 * the tokens shown around the centre, "home"/"end" go to the first/last tokens.
 * @param {number[]} view @param {string} action @param {number} nUnits @param {number} nTokens
 * @returns {[number, number, number, number]}
 */
export function moveView([u0, u1, t0, t1], action, nUnits, nTokens) {
  const nu = u1 - u0;
  let nt = t1 - t0;
  let [a, b] = [u0, t0];
  if (action === "up") a -= nu;
  else if (action === "down") a += nu;
  else if (action === "left") b -= Math.max(1, nt >> 1);
  else if (action === "right") b += Math.max(1, nt >> 1);
  else if (action === "home") b = 0;
  else if (action === "end") b = nTokens - nt;
  else if (action === "in" || action === "out") {
    const centre = t0 + nt / 2;
    nt = action === "in" ? Math.max(Math.min(MIN_TOKENS, nTokens), nt >> 1) : Math.min(nTokens, nt * 2);
    b = Math.round(centre - nt / 2);
  }
  a = Math.min(Math.max(a, 0), nUnits - nu);
  b = Math.min(Math.max(b, 0), nTokens - nt);
  return [a, a + nu, b, b + nt];
}

/** A threshold argument as the slider shows it: "z > 3.00" or "q > 0.950". */
export function formatThreshold(/** @type {string} */ method, /** @type {number} */ value) {
  return method === "zscore" ? `z > ${value.toFixed(2)}` : `quantile > ${value.toFixed(3)}`;
}

/**
 * Every how many of `n` cells drawn over `px` pixels a tick goes, so that ticks are at least
 * `minPx` apart: 1, 2 or 5 times a power of ten.
 * @param {number} n @param {number} px @param {number} minPx
 */
export function tickEvery(n, px, minPx) {
  const least = (minPx * n) / Math.max(px, 1);
  for (let power = 1; ; power *= 10) {
    for (const step of [1, 2, 5]) if (step * power >= least) return step * power;
  }
}

/**
 * The runs of equal categories down the rows (the bands of a raster sorted by a label).
 * @param {string[]} categories one per row
 * @returns {Array<{name: string, start: number, end: number}>}
 */
export function bands(categories) {
  /** @type {Array<{name: string, start: number, end: number}>} */
  const out = [];
  categories.forEach((name, row) => {
    const last = out[out.length - 1];
    if (last && last.name === name) last.end = row + 1;
    else out.push({ name, start: row, end: row + 1 });
  });
  return out;
}

/**
 * Where the bars of a tuning curve go, in percent of the track: the axis spans zero and every
 * mean ± s.e.m.; each bar runs from zero to its mean (left of zero when negative), and its
 * error bar from mean - s.e.m. to mean + s.e.m. (none when the s.e.m. is not a number).
 * @param {ArrayLike<number>} mean @param {ArrayLike<number>} sem
 */
export function barGeometry(mean, sem) {
  const m = Array.from(mean);
  const s = Array.from(sem, (v) => (Number.isFinite(v) ? v : 0));
  const lo = Math.min(0, ...m.map((v, i) => v - s[i]));
  const hi = Math.max(0, ...m.map((v, i) => v + s[i]));
  const span = hi - lo || 1;
  const x = (/** @type {number} */ v) => (100 * (v - lo)) / span;
  return {
    zero: x(0),
    bars: m.map((v, i) => ({
      left: x(Math.min(0, v)), width: Math.abs(x(v) - x(0)),
      error: Number.isFinite(sem[i]) ? { left: x(v - s[i]), width: x(v + s[i]) - x(v - s[i]) } : null,
    })),
  };
}

class RasterView extends View {
  /** @param {any} model @param {HTMLElement} el @param {import("./wire.js").Invoke} invoke */
  constructor(model, el, invoke) {
    super(model, el, invoke);
    this.started = performance.now();
    this.windows = this.channel("_window");
    this.units = this.channel("_unit");
    this.tokenContexts = this.channel("_token");
    /** @type {{site: string, method: string, nUnits: number, nTokens: number, ladder: Float32Array} | null} */
    this.meta = null;
    /** @type {{u0: number, t0: number, nu: number, nt: number, codes: Uint8Array, counts: Int32Array,
     *          units: Int32Array, preferred: string[] | null, tokens: string[]} | null} */
    this.win = null;
    /** @type {{row: number, col: number} | null} the cursor cell, in window coordinates */
    this.cursor = null;

    const meta = model.get("_meta");
    this.slider = /** @type {HTMLInputElement} */ (h("input", {
      type: "range", min: 0, max: meta.rungs - 1, step: 1, value: model.get("rung"), class: "llmscope-threshold",
      "aria-label": "spike threshold: a unit spikes where its response is above it",
    }));
    this.thresholdText = h("span", { class: "llmscope-threshold-value" });
    const button = (/** @type {string} */ text, /** @type {string} */ action, /** @type {string} */ label) => {
      const b = h("button", { type: "button", class: "llmscope-button", "aria-label": label, "data-action": action }, text);
      b.addEventListener("click", () => this.move(action));
      return b;
    };
    this.canvas = /** @type {HTMLCanvasElement} */ (h("canvas", {
      class: "llmscope-raster-canvas", tabindex: 0, role: "img",
      "aria-label": "spike raster, a row per unit and a column per token: click a cell to select its unit and " +
                    "token; arrow keys move the selection, Page Up/Down scroll units, + and - zoom tokens",
    }));
    this.marks = h("div", { class: "llmscope-raster-marks", "aria-hidden": "true" });
    this.stage = h("div", { class: "llmscope-raster-stage" }, this.canvas, this.marks);
    this.gutter = h("div", { class: "llmscope-raster-gutter", "aria-hidden": "true" });
    this.tokenAxis = h("div", { class: "llmscope-raster-taxis", "aria-hidden": "true" });
    this.readout = h("div", { class: "llmscope-readout", "aria-live": "polite" });
    this.unitPanel = h("div", { class: "llmscope-raster-unit", "aria-live": "polite" },
      h("div", { class: "llmscope-hint" }, "click a unit to see its tuning curve and top examples"));
    this.tokenPanel = h("div", { class: "llmscope-raster-token", "aria-live": "polite" });
    el.replaceChildren(h("div", { class: "llmscope llmscope-raster" },
      this.errors.el,
      h("div", { class: "llmscope-raster-controls" },
        h("label", {}, "threshold ", this.slider), this.thresholdText,
        button("◀", "left", "earlier tokens"), button("▶", "right", "later tokens"),
        button("▲", "up", "previous units"), button("▼", "down", "next units"),
        button("+", "in", "zoom in: fewer tokens"), button("−", "out", "zoom out: more tokens")),
      this.status,
      h("div", { class: "llmscope-raster-body" },
        h("div", { class: "llmscope-raster-plot" },
          h("div", { class: "llmscope-raster-frame" },
            this.gutter, this.stage,
            h("div", { class: "llmscope-raster-corner" }, "unit ↓ token →"), this.tokenAxis),
          this.readout),
        h("div", { class: "llmscope-raster-side" }, this.unitPanel, this.tokenPanel))));

    this.fetchWindowSoon = this.soon(() => this.fetchWindow(), WINDOW_DEBOUNCE_MS);
    this.saveRungSoon = this.soon(() => { this.model.set("rung", this.rung()); this.model.save_changes(); },
                                  SAVE_DEBOUNCE_MS);
    this.fetchUnitSoon = this.soon((/** @type {number} */ unit) => this.fetchUnit(unit), CLICK_DEBOUNCE_MS);
    this.fetchTokenSoon = this.soon((/** @type {number} */ column) => this.fetchToken(column), CLICK_DEBOUNCE_MS);
    this.slider.addEventListener("input", () => { this.paint(); this.saveRungSoon(); });
    this.canvas.addEventListener("click", (e) => this.click(e));
    this.canvas.addEventListener("mousemove", (e) => this.hover(e));
    this.canvas.addEventListener("mouseleave", () => this.gutter.querySelector(".is-hover")?.remove());
    this.canvas.addEventListener("keydown", (e) => this.key(e));
    this.canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      const zoom = e.ctrlKey || e.metaKey;
      const tokens = e.shiftKey || Math.abs(e.deltaX) > Math.abs(e.deltaY);
      const back = (tokens && !e.shiftKey ? e.deltaX : e.deltaY) < 0;
      this.move(zoom ? (back ? "in" : "out") : tokens ? (back ? "left" : "right") : (back ? "up" : "down"));
    }, { passive: false });
    // the canvas follows the notebook's width: on a new size, pool to its pixels again
    this.resized = new ResizeObserver(() => { if (this.win) this.show(); });
    this.resized.observe(this.stage);
    this.on("change:version", () => this.refresh());
    this.on("change:rung", () => { this.slider.value = String(this.model.get("rung")); this.paint(); });
    this.on("change:selection", () => {  // a click here, or `raster.selected = ...` in Python
      this.markSelection();
      const selection = this.model.get("selection");
      if (selection.length) this.fetchUnitSoon(selection[selection.length - 1]);
    });
    this.on("change:view", () => { if (!this.showing(this.model.get("view"))) this.fetchWindowSoon(); });
    this.refresh(model.get("_first_window"));
  }

  rung() {
    return Number(this.slider.value);
  }

  /** Whether the window on show is `view`. */
  showing(/** @type {number[]} */ [u0, u1, t0, t1]) {
    const w = this.win;
    return w !== null && w.u0 === u0 && w.u0 + w.nu === u1 && w.t0 === t0 && w.t0 + w.nt === t1;
  }

  /**
   * Read the sizes and ladder from the state, then show the view: `first` (the state's first
   * window) when it is the view's window, else the kernel's answer.
   * @param {any} [first]
   */
  async refresh(first) {
    this.win = null;
    const read = await this.guard("meta", async () => {
      const data = this.model.get("_meta");
      const ladder = await decodeArray(data.ladder);
      this.meta = { site: data.site, method: data.method, nUnits: data.n_units, nTokens: data.n_tokens,
                    ladder: /** @type {Float32Array} */ (ladder.data) };
      this.slider.max = String(data.rungs - 1);
    });
    if (!read) return;
    if (shows(first, this.model.get("view"), this.model.get("version"))) {
      await this.guard("window", () => this.receive(first, performance.now()));
    } else {
      await this.fetchWindow();
    }
  }

  /** @param {string} action */
  move(action) {
    if (!this.meta) return;
    const to = moveView(this.model.get("view"), action, this.meta.nUnits, this.meta.nTokens);
    this.model.set("view", to);
    this.model.save_changes();
    this.fetchWindowSoon();
  }

  /** Ask for the codes of the view and draw them. */
  fetchWindow() {
    return this.guard("window", async () => {
      const [u0, u1, t0, t1] = this.model.get("view");
      this.status.textContent = "loading…";
      const asked = performance.now();
      const reply = this.windows.request({ u0, u1, t0, t1 });
      warmUp();
      const data = await reply;
      if (data === null) return;
      const arrived = performance.now();
      this.canvas.dataset.roundTripMs = (arrived - asked).toFixed(2);
      await this.receive(data, arrived);
    });
  }

  /**
   * Decode a window and show it; `since` is when it was at hand (ms, performance.now()).
   * @param {any} data a `_window` answer @param {number} since
   */
  async receive(data, since) {
    const [codes, counts, units] = await Promise.all([data.codes, data.counts, data.units].map(decodeArray));
    const [nu, nt] = codes.shape;
    this.win = { u0: data.u0, t0: data.t0, nu, nt, codes: /** @type {Uint8Array} */ (codes.data),
                 counts: /** @type {Int32Array} */ (counts.data), units: /** @type {Int32Array} */ (units.data),
                 preferred: data.preferred, tokens: data.tokens };
    this.cursor = null;
    this.show();
    this.canvas.dataset.windowMs = (performance.now() - since).toFixed(2);  // decode + paint
  }

  /** Lay out the axes of the window on show and paint it. */
  show() {
    this.labelUnits();
    this.labelTokens();
    this.paint();
  }

  /** Draw the window at the slider's rung (no kernel involved), pooled to the canvas's pixels. */
  paint() {
    const { win, meta } = this;
    if (!win || !meta) return;
    const rung = this.rung();
    const start = performance.now();
    drawHeatmap(this.canvas, win.codes, win.nt, win.nu, spikeTable(rung), {
      maxWidth: devicePixels(this.stage.clientWidth || win.nt), maxHeight: devicePixels(this.stage.clientHeight || win.nu),
    });
    const spikes = spikesAbove(win.counts, rung);
    this.canvas.dataset.paintMs = (performance.now() - start).toFixed(2);
    this.canvas.dataset.rung = String(rung);
    this.canvas.dataset.spikes = String(spikes);
    this.canvas.dataset.view = `${win.u0},${win.u0 + win.nu},${win.t0},${win.t0 + win.nt}`;
    this.canvas.dataset.firstPaintMs ??= (performance.now() - this.started).toFixed(1);
    const shown = formatThreshold(meta.method, meta.ladder[rung]);
    this.thresholdText.textContent = shown;
    this.slider.setAttribute("aria-valuetext", shown);
    const pooled = this.canvas.width < win.nt || this.canvas.height < win.nu
      ? ` (each pixel ${(win.nu / this.canvas.height).toFixed(1)} units x ${(win.nt / this.canvas.width).toFixed(1)} ` +
        "tokens: dark if any spikes)" : "";
    this.status.textContent = `${meta.site}: units ${win.u0}–${win.u0 + win.nu - 1} of ${meta.nUnits}, tokens ` +
                              `${win.t0}–${win.t0 + win.nt - 1} of ${meta.nTokens}; ${spikes} spikes in view${pooled}`;
    this.markSelection();
  }

  /** The gutter: a band per run of one `sort_by` category, and unit ids where they fit. */
  labelUnits() {
    const win = /** @type {NonNullable<RasterView["win"]>} */ (this.win);
    const height = this.stage.clientHeight || win.nu;
    const pct = (/** @type {number} */ row) => `${(100 * row) / win.nu}%`;
    const marks = [];
    if (win.preferred) {
      bands(win.preferred).forEach(({ name, start, end }, i) => {
        const tall = ((end - start) * height) / win.nu >= 12;
        marks.push(h("div", { class: `llmscope-band is-${i % 2 ? "odd" : "even"}`, title: `prefers ${name}`,
                              style: `top: ${pct(start)}; height: ${pct(end - start)}` }, tall ? name : ""));
      });
    }
    const every = tickEvery(win.nu, height, UNIT_TICK_PX);
    for (let row = 0; row < win.nu; row += every) {
      marks.push(h("div", { class: "llmscope-tick", style: `top: ${pct(row + 0.5)}` }, String(win.units[row])));
    }
    this.gutter.replaceChildren(...marks);
    this.gutter.classList.toggle("has-bands", win.preferred !== null);
  }

  /** The token axis: positions where they fit, and each token's text once the columns are wide. */
  labelTokens() {
    const win = /** @type {NonNullable<RasterView["win"]>} */ (this.win);
    const width = this.stage.clientWidth || win.nt;
    const perToken = width / win.nt;
    const ticks = [];
    if (perToken >= TOKEN_TEXT_PX) {
      win.tokens.forEach((text, col) => ticks.push(h("div", {
        class: "llmscope-tick is-text", title: `token ${win.t0 + col}: ${JSON.stringify(text)}`,
        style: `left: ${(100 * col) / win.nt}%; width: ${100 / win.nt}%` }, displayText(text))));
    } else {
      const every = tickEvery(win.nt, width, TOKEN_TICK_PX);
      for (let t = Math.ceil(win.t0 / every) * every; t < win.t0 + win.nt; t += every) {
        ticks.push(h("div", { class: "llmscope-tick", style: `left: ${(100 * (t - win.t0 + 0.5)) / win.nt}%` }, String(t)));
      }
    }
    this.tokenAxis.replaceChildren(...ticks);
  }

  /** Mark the selected units (rows, and their ids in the gutter) and the cursor's token (column). */
  markSelection() {
    const { win } = this;
    if (!win) return;
    const selected = new Set(this.model.get("selection"));
    const marks = [];
    this.gutter.querySelectorAll(".is-selected").forEach((mark) => mark.remove());
    win.units.forEach((unit, row) => {
      if (!selected.has(unit)) return;
      const middle = `${(100 * (row + 0.5)) / win.nu}%`;
      marks.push(h("div", { class: "llmscope-raster-row", style: `top: ${middle}; height: ${100 / win.nu}%`, "data-row": row }));
      this.gutter.append(h("div", { class: "llmscope-tick is-selected", style: `top: ${(100 * (row + 0.5)) / win.nu}%` },
                           `▶ ${unit}`));
    });
    if (this.cursor) {
      marks.push(h("div", { class: "llmscope-raster-col", style: `left: ${(100 * this.cursor.col) / win.nt}%; ` +
                            `width: ${100 / win.nt}%` }));
    }
    this.marks.replaceChildren(...marks);
    this.canvas.dataset.selection = [...selected].join(",");
  }

  /** The label of a window row's unit: "mlp.0:12". */
  label(/** @type {number} */ row) {
    return `${this.meta?.site}:${this.win?.units[row]}`;
  }

  /** A line about a cell: unit, token, spike or not. */
  describeCell(/** @type {{row: number, col: number}} */ { row, col }) {
    const win = /** @type {NonNullable<RasterView["win"]>} */ (this.win);
    const code = win.codes[row * win.nt + col];
    const pref = win.preferred ? ` (prefers ${win.preferred[row]})` : "";
    return `${this.label(row)}${pref} at token ${win.t0 + col} ${JSON.stringify(win.tokens[col])}: ` +
           (code > this.rung() ? "spike" : "no spike");
  }

  /** @param {MouseEvent} event */
  hover(event) {
    const { win } = this;
    if (!win) return;
    const cell = cellAt(event, this.canvas, win.nt, win.nu);
    if (!cell) return;
    this.readout.textContent = this.describeCell(cell);
    this.gutter.querySelector(".is-hover")?.remove();
    this.gutter.append(h("div", { class: "llmscope-tick is-hover", style: `top: ${(100 * (cell.row + 0.5)) / win.nu}%` },
                         String(win.units[cell.row])));
  }

  /** @param {MouseEvent} event */
  click(event) {
    if (!this.win) return;
    const cell = cellAt(event, this.canvas, this.win.nt, this.win.nu);
    if (cell) this.pick(cell, event.shiftKey);
  }

  /** Select the unit of `cell`'s row (adding it with `add`) and show its token; ask the kernel. */
  pick(/** @type {{row: number, col: number}} */ cell, add = false) {
    const win = /** @type {NonNullable<RasterView["win"]>} */ (this.win);
    const unit = win.units[cell.row];
    const before = this.model.get("selection");
    this.model.set("selection", add ? [...before.filter((/** @type {number} */ u) => u !== unit), unit] : [unit]);
    this.model.save_changes();
    this.cursor = cell;
    this.readout.textContent = this.describeCell(cell);
    this.markSelection();
    this.fetchUnitSoon(unit);
    this.fetchTokenSoon(win.t0 + cell.col);
  }

  /** @param {KeyboardEvent} event */
  key(event) {
    if (!this.win) return;
    /** @type {Record<string, string>} */
    const pages = { PageUp: "up", PageDown: "down", "+": "in", "=": "in", "-": "out", Home: "home", End: "end" };
    /** @type {Record<string, [number, number]>} */
    const steps = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    const action = pages[event.key];
    const step = steps[event.key];
    if (!action && !step) return;
    event.preventDefault();
    if (action) {
      this.move(action);
      return;
    }
    const { nu, nt } = this.win;
    const from = this.cursor ?? { row: 0, col: 0 };
    const to = this.cursor ? { row: from.row + step[0], col: from.col + step[1] } : from;
    this.pick({ row: Math.min(Math.max(to.row, 0), nu - 1), col: Math.min(Math.max(to.col, 0), nt - 1) });
  }

  /** Ask for a unit's tuning curve and top examples; show them. */
  fetchUnit(/** @type {number} */ unit) {
    return this.guard("unit", async () => {
      const data = await this.units.request({ unit });
      if (data === null) return;
      const parts = [h("div", { class: "llmscope-title" }, data.label)];
      if (data.curve) {
        const [mean, sem] = await Promise.all([decodeArray(data.curve.mean), decodeArray(data.curve.sem)]);
        parts.push(h("div", { class: "llmscope-axes" }, `tuning curve: mean response by ${data.curve.label} (± s.e.m.)`),
                   this.curve(data.curve.categories, mean.data, sem.data));
      }
      const activation = (await decodeArray(data.examples.activation)).data;
      const gap = data.joiner;
      parts.push(h("div", { class: "llmscope-axes" }, "top examples"), h("ol", { class: "llmscope-raster-examples" },
        ...data.examples.text.map((/** @type {string} */ text, /** @type {number} */ i) => h("li", {},
          h("span", { class: "llmscope-value" }, activation[i].toFixed(3)), " ",
          h("span", { class: "llmscope-context" }, data.examples.left[i] + gap,
            h("mark", {}, displayText(text)), gap + data.examples.right[i])))));
      this.unitPanel.replaceChildren(...parts);
      this.unitPanel.dataset.unit = String(unit);
    });
  }

  /**
   * Horizontal bars of a tuning curve from zero, with ± s.e.m. error bars, drawn with
   * elements (each category's name as text).
   * @param {string[]} categories @param {ArrayLike<number>} mean @param {ArrayLike<number>} sem
   */
  curve(categories, mean, sem) {
    const { zero, bars } = barGeometry(mean, sem);
    return h("div", { class: "llmscope-raster-curve", role: "list" }, ...categories.map((name, i) => {
      const { left, width, error } = bars[i];
      return h("div", { class: "llmscope-raster-bar", role: "listitem",
                        "aria-label": `${name}: ${mean[i].toFixed(3)} ± ${Number(sem[i]).toFixed(3)}` },
        h("span", { class: "llmscope-bar-name" }, name),
        h("span", { class: "llmscope-bar-track" },
          h("i", { class: mean[i] < 0 ? "is-negative" : "", style: `left: ${left}%; width: ${width}%` }),
          error && h("b", { style: `left: ${error.left}%; width: ${error.width}%` }),
          h("u", { style: `left: ${zero}%` })),
        h("span", { class: "llmscope-value" }, mean[i].toFixed(3)));
    }));
  }

  /** Ask for a token's context; show it. */
  fetchToken(/** @type {number} */ column) {
    return this.guard("token", async () => {
      const data = await this.tokenContexts.request({ column });
      if (data === null) return;
      const gap = data.joiner;
      const labels = Object.entries(data.labels).map(([k, v]) => `${k}=${v}`).join(" · ");
      this.tokenPanel.replaceChildren(
        h("div", { class: "llmscope-title" }, `token ${column}`),
        h("div", { class: "llmscope-context" }, data.left + gap, h("mark", {}, displayText(data.text)), gap + data.right),
        h("div", { class: "llmscope-axes" }, labels));
      this.tokenPanel.dataset.column = String(column);
    });
  }

  destroy() {
    this.resized.disconnect();
    super.destroy();
  }
}

export default mount(RasterView);
