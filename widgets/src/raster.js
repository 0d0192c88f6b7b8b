// Raster: units x tokens spikes on a canvas, thresholded in the page. The kernel sends each
// cell as a byte code, how many rungs of its unit's threshold ladder the response exceeds;
// at slider rung k a cell spikes exactly where code > k, so moving the slider only rebuilds a
// 256-entry colour table and repaints (and counts spikes from the window's code histogram,
// which the kernel sends with the codes).
// The page holds only the visible window. The first one comes in the widget's state, with the
// model, so the first paint asks the kernel for nothing; the page asks for another window when
// the user scrolls or zooms. A click on a cell selects its unit (the kernel sends its tuning
// curve and top examples) and its token (the kernel sends its context).
//
// Kernel commands (llmscope/widgets/raster.py): `_window` (codes of a window, its unit indices
// and token texts), `_unit` (tuning curve, top examples), `_token` (context). Traits: `_meta`
// (sizes, ladder), `_first_window` (a `_window` answer for the first view, `{}` once it moved),
// `rung` (the slider), `selection` (unit indices), `view` ([u0, u1, t0, t1]), `version` (bumped
// by the kernel when the raster changed: ask again).
//
// Timings on the canvas, for the browser benchmark (ms, performance.now()): data-first-paint-ms
// (render to the first pixels, a request included if the state's window was not the view's),
// data-round-trip-ms (the last window's request to its reply; absent while the window on show
// came with the state), data-window-ms (that reply, or the state's window, to pixels: decode
// and paint), data-paint-ms (the last paint: pixels and spike count, as a slider step costs).

import { ErrorBox, guard } from "./alert.js";
import { MAPS, pack } from "./colormap.js";
import { h } from "./dom.js";
import { cellAt, fillPixels } from "./heatmap.js";
import { showLost, watchKernel } from "./kernel.js";
import { debounce } from "./timing.js";
import { displayText } from "./tokens.js";
import { Channel, decodeArray } from "./wire.js";

const WINDOW_DEBOUNCE_MS = 60;
const SAVE_DEBOUNCE_MS = 150;
const CLICK_DEBOUNCE_MS = 120;
const TIMEOUT_MS = 60_000;
const MIN_TOKENS = 16;
const SPIKE = pack(...MAPS.blues[4]);
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
      table[c] = pack(...SHADE.map((v) => Math.round(v * f)));
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
 * Run the per-cell loop (fillPixels) on 64k cells a few times, once per page, while a window is
 * on its way from the kernel: V8 compiles a loop only after it has run a while, so a paint of
 * 1e6 cold cells would otherwise spend most of its time in the interpreter (about half, in
 * node). Never while a window is at hand: it would only delay its paint.
 */
export function warmUp() {
  if (warmed) return;
  warmed = true;
  const codes = new Uint8Array(1 << 16);
  const pixels = new Uint32Array(codes.length);
  const table = spikeTable(0);
  for (let k = 0; k < 4; k++) fillPixels(pixels, codes, table, 256);
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

/**
 * The slider's rung after a key (arrows step 1, Page keys 10, Home/End the ends), or null.
 * @param {number} rung @param {string} key @param {number} max
 */
export function stepRung(rung, key, max) {
  const to = { ArrowLeft: rung - 1, ArrowDown: rung - 1, ArrowRight: rung + 1, ArrowUp: rung + 1,
               PageDown: rung - 10, PageUp: rung + 10, Home: 0, End: max }[key];
  return to === undefined ? null : Math.min(Math.max(to, 0), max);
}

/** A threshold argument as the slider shows it: "z > 3.00" or "q > 0.950". */
export function formatThreshold(/** @type {string} */ method, /** @type {number} */ value) {
  return method === "zscore" ? `z > ${value.toFixed(2)}` : `quantile > ${value.toFixed(3)}`;
}

class RasterView {
  /** @param {any} model @param {HTMLElement} el @param {import("./wire.js").Invoke} invoke */
  constructor(model, el, invoke) {
    this.model = model;
    this.started = performance.now();
    this.channels = {
      window: new Channel(invoke, "_window", { timeoutMs: TIMEOUT_MS }),
      unit: new Channel(invoke, "_unit", { timeoutMs: TIMEOUT_MS }),
      token: new Channel(invoke, "_token", { timeoutMs: TIMEOUT_MS }),
    };
    this.errors = new ErrorBox();
    /** @type {{site: string, method: string, nUnits: number, nTokens: number, ladder: Float32Array} | null} */
    this.meta = null;
    /** @type {{u0: number, t0: number, nu: number, nt: number, codes: Uint8Array, counts: Int32Array,
     *          units: Int32Array, preferred: string[] | null, tokens: string[]} | null} */
    this.win = null;
    /** @type {{image: ImageData, pixels: Uint32Array, context: CanvasRenderingContext2D} | null} */
    this.frame = null;
    /** @type {{row: number, col: number} | null} the cursor cell, in window coordinates */
    this.cursor = null;
    this.build(el);
    this.fetchWindowSoon = debounce(() => this.fetchWindow(), WINDOW_DEBOUNCE_MS);
    this.saveRungSoon = debounce(() => { this.model.set("rung", this.rung()); this.model.save_changes(); },
                                 SAVE_DEBOUNCE_MS);
    this.fetchUnitSoon = debounce((/** @type {number} */ unit) => this.fetchUnit(unit), CLICK_DEBOUNCE_MS);
    this.fetchTokenSoon = debounce((/** @type {number} */ column) => this.fetchToken(column), CLICK_DEBOUNCE_MS);
    this.unwatch = watchKernel(model, (error) => showLost(error, el, this.errors, Object.values(this.channels)));
    this.listeners = {
      "change:version": () => this.refresh(),
      "change:rung": () => { this.slider.value = String(this.model.get("rung")); this.paint(); },
      "change:selection": () => this.markSelection(),
      "change:view": () => { if (!this.showing(this.model.get("view"))) this.fetchWindowSoon(); },
    };
    for (const [event, fn] of Object.entries(this.listeners)) model.on(event, fn);
    this.refresh(model.get("_first_window"));
  }

  /** @param {HTMLElement} el */
  build(el) {
    this.slider = /** @type {HTMLInputElement} */ (h("input", {
      type: "range", min: 0, max: 254, step: 1, value: this.model.get("rung"), class: "llmscope-threshold",
      "aria-label": "spike threshold: a unit spikes where its response is above it",
    }));
    this.thresholdText = h("span", { class: "llmscope-threshold-value" });
    const button = (/** @type {string} */ text, /** @type {string} */ action, /** @type {string} */ label) => {
      const b = h("button", { type: "button", class: "llmscope-button", "aria-label": label, "data-action": action }, text);
      b.addEventListener("click", () => this.move(action));
      return b;
    };
    this.status = h("div", { class: "llmscope-status", role: "status" });
    this.canvas = /** @type {HTMLCanvasElement} */ (h("canvas", {
      class: "llmscope-raster-canvas", tabindex: 0, role: "img",
      "aria-label": "spike raster, a row per unit and a column per token: click a cell to select its unit and " +
                    "token; arrow keys move the selection, Page Up/Down scroll units, + and - zoom tokens",
    }));
    this.marks = h("div", { class: "llmscope-raster-marks", "aria-hidden": "true" });
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
      h("div", { class: "llmscope-columns" },
        h("div", { class: "llmscope-column" },
          h("div", { class: "llmscope-raster-frame" }, this.canvas, this.marks), this.readout),
        h("div", { class: "llmscope-column llmscope-raster-side" }, this.unitPanel, this.tokenPanel))));
    this.slider.addEventListener("input", () => { this.paint(); this.saveRungSoon(); });
    // the notebook's own shortcuts may cancel a range input's arrow keys: step it here
    this.slider.addEventListener("keydown", (e) => {
      const to = stepRung(this.rung(), e.key, Number(this.slider.max));
      if (to === null) return;
      e.preventDefault();
      e.stopPropagation();
      this.slider.value = String(to);
      this.paint();
      this.saveRungSoon();
    });
    this.canvas.addEventListener("click", (e) => this.click(e));
    this.canvas.addEventListener("mousemove", (e) => this.hover(e));
    this.canvas.addEventListener("keydown", (e) => this.key(e));
    this.canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      const zoom = e.ctrlKey || e.metaKey;
      const tokens = e.shiftKey || Math.abs(e.deltaX) > Math.abs(e.deltaY);
      const back = (tokens && !e.shiftKey ? e.deltaX : e.deltaY) < 0;
      this.move(zoom ? (back ? "in" : "out") : tokens ? (back ? "left" : "right") : (back ? "up" : "down"));
    }, { passive: false });
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
    const read = await guard(this.errors, "meta", async () => {
      const data = this.model.get("_meta");
      const ladder = await decodeArray(data.ladder);
      this.meta = { site: data.site, method: data.method, nUnits: data.n_units, nTokens: data.n_tokens,
                    ladder: /** @type {Float32Array} */ (ladder.data) };
      this.slider.max = String(ladder.data.length - 1);
    });
    if (!read) return;
    if (shows(first, this.model.get("view"), this.model.get("version"))) {
      await guard(this.errors, "window", () => this.show(first, performance.now()));
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
    return guard(this.errors, "window", async () => {
      const [u0, u1, t0, t1] = this.model.get("view");
      this.status.textContent = "loading…";
      const asked = performance.now();
      const reply = this.channels.window.request({ u0, u1, t0, t1 });
      warmUp();
      const data = await reply;
      if (data === null) return;
      const arrived = performance.now();
      this.canvas.dataset.roundTripMs = (arrived - asked).toFixed(2);
      await this.show(data, arrived);
    });
  }

  /**
   * Decode a window and paint it; `since` is when it was at hand (ms, performance.now()).
   * @param {any} data a `_window` answer @param {number} since
   */
  async show(data, since) {
    const [codes, counts, units] = await Promise.all([data.codes, data.counts, data.units].map(decodeArray));
    const [nu, nt] = codes.shape;
    this.win = { u0: data.u0, t0: data.t0, nu, nt, codes: /** @type {Uint8Array} */ (codes.data),
                 counts: /** @type {Int32Array} */ (counts.data), units: /** @type {Int32Array} */ (units.data),
                 preferred: data.preferred, tokens: data.tokens };
    this.cursor = null;
    this.paint();
    this.canvas.dataset.windowMs = (performance.now() - since).toFixed(2);  // decode + paint
  }

  /**
   * Colour the window's cells through `table`, one canvas pixel a cell. The ImageData is kept
   * while the window's size stays: a slider step then writes 4 bytes a cell and nothing else
   * (setting a canvas's size, even to the same value, reallocates and clears it).
   * @param {NonNullable<RasterView["win"]>} win @param {Uint32Array} table
   */
  draw(win, table) {
    let frame = this.frame;
    if (!frame || frame.image.width !== win.nt || frame.image.height !== win.nu) {
      this.canvas.width = win.nt;
      this.canvas.height = win.nu;
      const context = /** @type {CanvasRenderingContext2D} */ (this.canvas.getContext("2d"));
      const image = context.createImageData(win.nt, win.nu);
      frame = this.frame = { image, context, pixels: new Uint32Array(image.data.buffer) };
    }
    fillPixels(frame.pixels, win.codes, table, win.nt);
    frame.context.putImageData(frame.image, 0, 0);
  }

  /** The label of a window row's unit: "mlp.0:12". */
  label(/** @type {number} */ row) {
    return `${this.meta?.site}:${this.win?.units[row]}`;
  }

  /** Draw the window at the slider's rung (no kernel involved). */
  paint() {
    const { win, meta } = this;
    if (!win || !meta) return;
    const rung = this.rung();
    const start = performance.now();
    this.draw(win, spikeTable(rung));
    const spikes = spikesAbove(win.counts, rung);
    this.canvas.dataset.paintMs = (performance.now() - start).toFixed(2);
    this.canvas.dataset.rung = String(rung);
    this.canvas.dataset.spikes = String(spikes);
    this.canvas.dataset.view = `${win.u0},${win.u0 + win.nu},${win.t0},${win.t0 + win.nt}`;
    this.canvas.dataset.firstPaintMs ??= (performance.now() - this.started).toFixed(1);
    const shown = formatThreshold(meta.method, meta.ladder[rung]);
    this.thresholdText.textContent = shown;
    this.slider.setAttribute("aria-valuetext", shown);
    this.status.textContent = `${meta.site}: units ${win.u0}–${win.u0 + win.nu - 1} of ${meta.nUnits}, tokens ` +
                              `${win.t0}–${win.t0 + win.nt - 1} of ${meta.nTokens}; ${spikes} spikes in view`;
    this.markSelection();
  }

  /** Mark the selected units (rows) and the cursor's token (column) over the canvas. */
  markSelection() {
    const { win } = this;
    if (!win) return;
    const selected = new Set(this.model.get("selection"));
    const marks = [];
    win.units.forEach((unit, row) => {
      if (!selected.has(unit)) return;
      marks.push(h("div", { class: "llmscope-raster-row", style: `top: ${(100 * row) / win.nu}%; ` +
                            `height: max(2px, ${100 / win.nu}%)`, "data-row": row }));
    });
    if (this.cursor) {
      marks.push(h("div", { class: "llmscope-raster-col", style: `left: ${(100 * this.cursor.col) / win.nt}%; ` +
                            `width: max(2px, ${100 / win.nt}%)` }));
    }
    this.marks.replaceChildren(...marks);
    this.canvas.dataset.selection = [...selected].join(",");
  }

  /** A line about a cell: unit, token, spike or not. */
  describeCell(/** @type {{row: number, col: number}} */ { row, col }) {
    const { win } = /** @type {any} */ (this);
    const code = win.codes[row * win.nt + col];
    const pref = win.preferred ? ` (prefers ${win.preferred[row]})` : "";
    return `${this.label(row)}${pref} at token ${win.t0 + col} ${JSON.stringify(win.tokens[col])}: ` +
           (code > this.rung() ? "spike" : "no spike");
  }

  /** @param {MouseEvent} event */
  hover(event) {
    if (!this.win) return;
    const cell = cellAt(event, this.canvas, this.win.nt, this.win.nu);
    if (cell) this.readout.textContent = this.describeCell(cell);
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
    const pages = { PageUp: "up", PageDown: "down", "+": "in", "=": "in", "-": "out", Home: "home", End: "end" };
    const action = pages[/** @type {keyof typeof pages} */ (event.key)];
    const step = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] }[event.key];
    if (!action && !step) return;
    event.preventDefault();
    event.stopPropagation();
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
    return guard(this.errors, "unit", async () => {
      const data = await this.channels.unit.request({ unit });
      if (data === null) return;
      const parts = [h("div", { class: "llmscope-title" }, data.label)];
      if (data.curve) {
        const [mean, sem] = await Promise.all([decodeArray(data.curve.mean), decodeArray(data.curve.sem)]);
        parts.push(h("div", { class: "llmscope-axes" }, `tuning curve: mean response by ${data.curve.label} (± s.e.m.)`),
                   this.curve(data.curve.categories, /** @type {Float32Array} */ (mean.data),
                              /** @type {Float32Array} */ (sem.data)));
      }
      const activation = /** @type {Float32Array} */ ((await decodeArray(data.examples.activation)).data);
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
   * Horizontal bars of a tuning curve, drawn with elements (each category's name as text).
   * @param {string[]} categories @param {Float32Array} mean @param {Float32Array} sem
   */
  curve(categories, mean, sem) {
    const lo = Math.min(0, ...mean);
    const hi = Math.max(...Array.from(mean, (m, i) => m + (sem[i] || 0)), lo + 1e-9);
    return h("div", { class: "llmscope-raster-curve", role: "list" }, ...categories.map((name, i) => h(
      "div", { class: "llmscope-raster-bar", role: "listitem", "aria-label": `${name}: ${mean[i].toFixed(3)}` },
      h("span", { class: "llmscope-bar-name" }, name),
      h("span", { class: "llmscope-bar-track" }, h("i", { style: `width: ${(100 * (mean[i] - lo)) / (hi - lo)}%` })),
      h("span", { class: "llmscope-value" }, mean[i].toFixed(3)))));
  }

  /** Ask for a token's context; show it. */
  fetchToken(/** @type {number} */ column) {
    return guard(this.errors, "token", async () => {
      const data = await this.channels.token.request({ column });
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
    this.unwatch();
    for (const [event, fn] of Object.entries(this.listeners)) this.model.off(event, fn);
    for (const soon of [this.fetchWindowSoon, this.saveRungSoon, this.fetchUnitSoon, this.fetchTokenSoon]) soon.cancel();
    Object.values(this.channels).forEach((channel) => channel.cancel());
  }
}

export default {
  /** @param {{model: any, el: HTMLElement, experimental: {invoke: import("./wire.js").Invoke}}} props */
  render({ model, el, experimental }) {
    const view = new RasterView(model, el, experimental.invoke);
    return () => view.destroy();
  },
};
