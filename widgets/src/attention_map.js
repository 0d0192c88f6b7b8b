// @ts-check
// AttentionMap: every layer x head of a model as thumbnails labelled with their head scores,
// one focused head as a query x key heatmap fetched on demand, the prompt's tokens shaded by
// where the hovered token attends, and a prompt box that re-runs the model in the kernel.
//
// A new prompt runs in the background in the kernel and streams: the kernel reports each layer
// as the forward pass reaches it (`_progress`), and the page asks for the thumbnails done so
// far, so a long prompt fills the grid layer by layer, with a progress bar and a cancel button
// (the kernel stops at the next layer and keeps the prompt it had). The old tokens, pictures
// and errors go at once; no request waits for the whole run, so no timeout is shorter than it.
//
// Kernel commands (llmscope/widgets/attention.py): `_overview` (thumbnails, scores, tokens of
// what is shown: the running prompt's layers so far, else the finished one), `_head` (one
// head's pattern), `_run` (start a new prompt), `_cancel` (stop it). Traits: `prompt`, `focus`
// ([layer, head], set here when a head is picked), `version` (bumped by the kernel when a new
// prompt is in), `_progress` ({run, state, done, total, n_tokens, error}: a run's layers),
// `_attribution` ({behaviour, label, signed, values: [layers][heads], null = no number} from
// `colour_by`, or {}: a bar under each thumbnail).

import { MAPS, css, lut } from "./colormap.js";
import { h } from "./dom.js";
import { cellAt, devicePixels, drawHeatmap } from "./heatmap.js";
import { View, mount } from "./mount.js";
import { TokenStrip } from "./tokens.js";
import { KernelError, decodeArray } from "./wire.js";

const PROMPT_DEBOUNCE_MS = 400;
const FOCUS_DEBOUNCE_MS = 40;
const LAYER_DEBOUNCE_MS = 30;
const HEATMAP_PX = 360;  // the focused head's canvas, CSS pixels a side (attention_map.css)
// colour follows the square root of attention, so a head that spreads thinly still shows
const TABLE = lut(MAPS.blues, { gamma: 0.5 });

/**
 * The head the grid's keys move to from `[layer, head]` (clamped at the edges), or null.
 * @param {[number, number]} focus @param {string} key @param {number} nLayers @param {number} nHeads
 * @returns {[number, number] | null}
 */
export function moveFocus([layer, head], key, nLayers, nHeads) {
  const clamp = (/** @type {number} */ v, /** @type {number} */ n) => Math.min(Math.max(v, 0), n - 1);
  /** @type {Record<string, [number, number]>} */
  const moves = {
    ArrowLeft: [layer, head - 1], ArrowRight: [layer, head + 1], ArrowUp: [layer - 1, head],
    ArrowDown: [layer + 1, head], Home: [layer, 0], End: [layer, nHeads - 1],
    PageUp: [0, head], PageDown: [nLayers - 1, head],
  };
  const to = moves[key];
  return to ? [clamp(to[0], nLayers), clamp(to[1], nHeads)] : null;
}

/**
 * How long a run may go without finishing a layer before the page says the kernel seems
 * stuck: a layer's attention grows with the square of the prompt, so this does too (a minute
 * up to 1,024 tokens, four at 2,048, sixteen at 4,096). It only warns; the run goes on.
 * @param {number} nTokens
 */
export function stallMs(nTokens) {
  return 60_000 * Math.max(1, (nTokens / 1024) ** 2);
}

/** A score in 0..1 as ".92" (NaN, no score on this prompt, as "–"). */
export function formatScore(/** @type {number} */ x) {
  return Number.isFinite(x) ? x.toFixed(2).replace(/^0\./, ".") : "–";
}

/** A share in -1..1 as ".83" or "−.42" (the sign kept: a negative estimate helps). */
export function formatShare(/** @type {number} */ x) {
  return (x < 0 ? "−" : "") + formatScore(Math.abs(x));
}

/**
 * Each head's mark for an attribution grid `[layers][heads]` (null where a head has no
 * number): its share of the grid's largest absolute value, and its bar's colour, orange where
 * the value is positive (a lesion of the head harms the behaviour), blue where negative, darker
 * with the share. A grid of zeros gives shares of 0.
 * @param {Array<Array<number | null>>} values
 * @returns {Array<Array<{share: number, colour: string} | null>>}
 */
export function attributionMarks(values) {
  let largest = 0;
  for (const row of values) for (const v of row) if (v !== null && Number.isFinite(v)) largest = Math.max(largest, Math.abs(v));
  return values.map((row) => row.map((v) => {
    if (v === null || !Number.isFinite(v)) return null;
    const share = largest > 0 ? v / largest : 0;
    return { share, colour: css(share < 0 ? MAPS.blues : MAPS.oranges, 0.35 + 0.65 * Math.abs(share)) };
  }));
}

/**
 * For token `i` of an `n` x `n` pattern of byte codes: how much it attends to each earlier
 * token (row i) and how much each later token attends to it (column i), in 0..1.
 * @param {Uint8Array} pattern @param {number} n @param {number} i
 */
export function tokenShades(pattern, n, i) {
  const attends = new Float32Array(n);
  const attendedBy = new Float32Array(n);
  for (let j = 0; j <= i; j++) attends[j] = pattern[i * n + j] / 255;
  for (let j = i; j < n; j++) attendedBy[j] = pattern[j * n + i] / 255;
  return { attends, attendedBy };
}

/**
 * CSS backgrounds for the token strip: tokens up to `i` in blue by how much `i` attends to
 * them, tokens after it in orange by how much they attend to `i`.
 * @param {{attends: Float32Array, attendedBy: Float32Array}} shades @param {number} i
 * @returns {Array<string | null>}
 */
export function shadeColours({ attends, attendedBy }, i) {
  return Array.from(attends, (a, j) => {
    const v = j <= i ? a : attendedBy[j];
    return v > 0 ? css(j <= i ? MAPS.blues : MAPS.oranges, 0.75, Math.sqrt(v)) : null;
  });
}

class AttentionView extends View {
  /** @param {any} model @param {HTMLElement} el @param {import("./wire.js").Invoke} invoke */
  constructor(model, el, invoke) {
    super(model, el, invoke);
    this.overviews = this.channel("_overview");
    this.heads = this.channel("_head");
    this.runs = this.channel("_run");
    this.cancels = this.channel("_cancel");
    /** what the kernel sent for the prompt on show (a running one, or the finished one) */
    this.shown = { run: -1, complete: false, painted: 0, nLayers: 0, nHeads: 0, tokens: /** @type {string[]} */ ([]),
                   scores: /** @type {ArrayLike<number>} */ (new Float32Array(0)), scoreNames: /** @type {string[]} */ ([]) };
    /** @type {{data: Uint8Array, n: number, layer: number, head: number} | null} */
    this.pattern = null;
    /** @type {HTMLElement[][]} */
    this.cells = [];
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.stall = null;

    this.promptBox = /** @type {HTMLTextAreaElement} */ (h("textarea", {
      class: "llmscope-prompt", rows: 3, spellcheck: "false", placeholder: "a prompt: the model reads it as you type",
      "aria-label": "prompt: editing it runs the model again",
    }));
    this.progress = /** @type {HTMLProgressElement} */ (h("progress", { class: "llmscope-progress", max: 1, value: 0,
                                                                      "aria-label": "layers of the model run so far" }));
    this.cancelButton = /** @type {HTMLButtonElement} */ (h("button", {
      type: "button", class: "llmscope-cancel", "aria-label": "cancel: stop the model at the next layer" }, "cancel"));
    this.runBox = h("div", { class: "llmscope-run" }, this.progress, this.cancelButton);
    this.runBox.hidden = true;
    this.grid = h("div", {
      class: "llmscope-grid", role: "grid",
      "aria-label": "attention heads, a row per layer and a column per head: click one, or move with the arrow keys",
    });
    this.attributionLegend = h("div", { class: "llmscope-legend llmscope-attribution" });
    this.attributionLegend.hidden = true;
    this.title = h("div", { class: "llmscope-title" });
    this.canvas = /** @type {HTMLCanvasElement} */ (h("canvas", { class: "llmscope-heatmap", role: "img" }));
    this.readout = h("div", { class: "llmscope-readout", "aria-live": "polite" });
    this.tokens = new TokenStrip({
      label: "tokens of the prompt: hover one, or move with the arrow keys, to see where it attends",
      onActive: () => this.shadeTokens(),
    });
    const swatch = (/** @type {import("./colormap.js").Stops} */ map, /** @type {string} */ text) => h(
      "span", { class: "llmscope-swatch" }, h("i", { style: `background: ${css(map, 0.75, 0.8)}` }), text);
    el.replaceChildren(h("div", { class: "llmscope llmscope-attention" },
      this.errors.el,
      h("div", { class: "llmscope-columns" },
        h("div", { class: "llmscope-column llmscope-overview" }, this.promptBox, this.status, this.runBox, this.grid,
          this.attributionLegend),
        h("div", { class: "llmscope-column llmscope-focus" }, this.title,
          h("div", { class: "llmscope-axes" }, "rows: query token · columns: key token it attends to"),
          this.canvas, this.readout,
          h("div", { class: "llmscope-legend" }, swatch(MAPS.blues, "where the token attends"),
            swatch(MAPS.oranges, "what attends to it")),
          this.tokens.el))));

    this.submitSoon = this.soon((/** @type {string} */ text) => this.submit(text), PROMPT_DEBOUNCE_MS);
    this.fetchHeadSoon = this.soon(() => this.fetchHead(), FOCUS_DEBOUNCE_MS);
    this.refreshSoon = this.soon(() => this.refresh(), LAYER_DEBOUNCE_MS);
    this.promptBox.addEventListener("input", () => this.submitSoon(this.promptBox.value));
    this.cancelButton.addEventListener("click", () => this.cancel());
    this.grid.addEventListener("click", (e) => {
      const cell = e.target instanceof Element ? e.target.closest(".llmscope-cell") : null;
      if (cell) this.setFocus(Number(cell.getAttribute("data-layer")), Number(cell.getAttribute("data-head")));
    });
    this.grid.addEventListener("keydown", (e) => {
      const to = moveFocus(this.model.get("focus"), e.key, this.shown.nLayers, this.shown.nHeads);
      if (!to) return;
      e.preventDefault();
      this.setFocus(...to);
      this.cells[to[0]]?.[to[1]]?.focus({ preventScroll: true });
      this.scrollToFocus();
    });
    this.canvas.addEventListener("mousemove", (e) => this.hoverCell(e));
    this.on("change:version", () => this.refresh());
    this.on("change:focus", () => { this.markFocus(); this.scrollToFocus(); this.fetchHeadSoon(); });
    this.on("change:prompt", () => this.syncPrompt());
    this.on("change:_progress", () => this.followRun());
    this.on("change:_attribution", () => this.markAttribution());
    this.syncPrompt();
    this.followRun();
    this.refresh();
  }

  syncPrompt() {
    const prompt = this.model.get("prompt");
    if (this.promptBox.value !== prompt && document.activeElement !== this.promptBox) this.promptBox.value = prompt;
  }

  /** Follow the kernel's run of a prompt: progress, the layers it finished, how it ended. */
  followRun() {
    const run = this.model.get("_progress");
    if (!run || run.run === undefined) return;
    const running = run.state === "running";
    this.runBox.hidden = !running;
    if (this.stall !== null) clearTimeout(this.stall);
    this.stall = null;
    if (running) {
      if (run.run !== this.shown.run) this.clearShown(run.run);
      this.progress.max = run.total;
      this.progress.value = run.done;
      this.cancelButton.disabled = false;
      this.status.textContent = `running the model on ${run.n_tokens} tokens: ${run.done} of ${run.total} layers`;
      const ms = stallMs(run.n_tokens);
      this.stall = setTimeout(() => {
        this.status.textContent += ` · no layer for ${Math.round(ms / 1000)} s: the kernel may be busy or stuck`;
      }, ms);
      this.refreshSoon();
    } else if (run.state === "cancelled") {
      this.status.textContent = `cancelled after ${run.done} of ${run.total} layers: the previous prompt is shown`;
      this.refresh();
    } else if (run.state === "failed") {
      this.errors.show("run", new KernelError(run.error));
      this.refresh();
    }
  }

  /** Forget what is shown at once (a new prompt is on its way): tokens, pictures, readouts, errors. */
  clearShown(/** @type {number} */ run) {
    for (const slot of ["run", "overview", "head", "cancel"]) this.errors.clear(slot);
    this.shown = { ...this.shown, run, complete: false, painted: 0, tokens: [], scores: [], scoreNames: [] };
    this.pattern = null;
    this.tokens.setTokens([], 0);
    this.readout.textContent = "";
    this.title.textContent = "";
    this.canvas.getContext("2d")?.clearRect(0, 0, this.canvas.width, this.canvas.height);
    delete this.canvas.dataset.focus;
    for (const cell of this.cells.flat()) {
      /** @type {HTMLCanvasElement} */ (cell.firstChild).getContext("2d")?.clearRect(0, 0, 1e4, 1e4);
      cell.classList.add("is-pending");
      /** @type {HTMLElement} */ (cell.lastChild).textContent = "…";
    }
    this.grid.dataset.run = String(run);
    this.grid.dataset.done = "0";
  }

  /** Ask for the thumbnails, scores and tokens of what the kernel shows; draw what is new. */
  refresh() {
    return this.guard("overview", async () => {
      const data = await this.overviews.request();
      if (data === null) return;
      const [thumbs, scores] = await Promise.all([decodeArray(data.thumbs), decodeArray(data.scores)]);
      const [nLayers, nHeads] = thumbs.shape;
      if (data.run !== this.shown.run || nLayers !== this.shown.nLayers || nHeads !== this.shown.nHeads) {
        const rebuild = nLayers !== this.shown.nLayers || nHeads !== this.shown.nHeads;
        if (rebuild) this.buildGrid(nLayers, nHeads);
        this.clearShown(data.run);
        this.shown = { ...this.shown, nLayers, nHeads };
        if (rebuild) this.markAttribution();
      }
      if (this.shown.tokens.length === 0 && data.tokens.length) {
        this.shown.tokens = data.tokens;
        this.tokens.setTokens(data.tokens, data.n_bos);
      }
      this.paintThumbs(/** @type {Uint8Array} */ (thumbs.data), thumbs.shape[2], data.done);
      if (data.complete && !this.shown.complete) {
        this.shown = { ...this.shown, complete: true, scores: scores.data, scoreNames: data.score_names };
        this.labelCells();
        this.pattern = null;  // drawn before the scores came: draw it again, titled with them
        this.status.textContent = `${data.model}: ${data.tokens.length} tokens`;
        this.markFocus();
        this.scrollToFocus();
      }
      this.errors.clear("overview");
      if (!this.pattern && this.model.get("focus")[0] < data.done) await this.fetchHead();
    });
  }

  /** @param {number} nLayers @param {number} nHeads */
  buildGrid(nLayers, nHeads) {
    this.grid.style.setProperty("--heads", String(nHeads));
    const header = h("div", { class: "llmscope-grid-row", role: "row" }, h("span", { role: "columnheader" }),
      ...Array.from({ length: nHeads }, (_, head) => h("span", { class: "llmscope-axis", role: "columnheader" }, `head ${head}`)));
    this.cells = Array.from({ length: nLayers }, (_, layer) => Array.from({ length: nHeads }, (_, head) => h(
      "div", { class: "llmscope-cell", role: "gridcell", tabindex: -1, "data-layer": layer, "data-head": head,
               "aria-selected": "false" },
      h("canvas", { "aria-hidden": "true" }), h("span", { class: "llmscope-cell-bar", hidden: true }, h("i")),
      h("span", { class: "llmscope-cell-label" }))));
    this.grid.replaceChildren(header, ...this.cells.map((row, layer) => h(
      "div", { class: "llmscope-grid-row", role: "row" },
      h("span", { class: "llmscope-axis", role: "rowheader" }, `attn.${layer}`), ...row)));
  }

  /** Draw the thumbnails of the layers done since the last paint. @param {Uint8Array} thumbs [layers, heads, t, t] */
  paintThumbs(thumbs, /** @type {number} */ t, /** @type {number} */ done) {
    const { nHeads } = this.shown;
    for (let layer = this.shown.painted; layer < done; layer++) {
      this.cells[layer].forEach((cell, head) => {
        const at = layer * nHeads + head;
        drawHeatmap(/** @type {HTMLCanvasElement} */ (cell.firstChild), thumbs.subarray(at * t * t, (at + 1) * t * t),
                    t, t, TABLE);
        cell.classList.remove("is-pending");
      });
    }
    this.shown.painted = Math.max(this.shown.painted, done);
    this.grid.dataset.done = String(this.shown.painted);
  }

  /** Label each cell with its scores (once the run is complete) and its attribution (once set). */
  labelCells() {
    const { nHeads, scores, scoreNames, complete } = this.shown;
    const [previous, induction] = ["previous_token", "induction"].map((name) => scoreNames.indexOf(name));
    const { marks, what } = this.attribution();
    this.cells.forEach((row, layer) => row.forEach((cell, head) => {
      const parts = [];
      if (complete) {
        const at = (layer * nHeads + head) * scoreNames.length;
        const [p, i] = [scores[at + previous], scores[at + induction]];
        /** @type {HTMLElement} */ (cell.lastChild).textContent = `P ${formatScore(p)} I ${formatScore(i)}`;
        parts.push(`previous-token score ${formatScore(p)}, induction score ${formatScore(i)}`);
      }
      if (marks) {
        const mark = marks[layer]?.[head] ?? null;
        parts.push(mark ? `${what} ${formatShare(mark.share)} of the largest` : `${what}: not screened`);
      }
      cell.setAttribute("aria-label", `layer ${layer}, head ${head}${parts.length ? ": " : ""}${parts.join("; ")}`);
    }));
  }

  /** The attribution `colour_by` set: each head's mark (null: none set) and what it is of, in words. */
  attribution() {
    const attribution = this.model.get("_attribution") ?? {};
    return { marks: attribution.values ? attributionMarks(attribution.values) : null, signed: Boolean(attribution.signed),
             what: `${attribution.label}${attribution.behaviour ? ` for ${attribution.behaviour}` : ""}` };
  }

  /** Mark each head by the attribution `colour_by` set (a bar under its thumbnail), or take the marks off. */
  markAttribution() {
    const { marks, signed, what } = this.attribution();
    this.cells.forEach((row, layer) => row.forEach((cell, head) => {
      const bar = /** @type {HTMLElement} */ (cell.children[1]);
      const mark = marks?.[layer]?.[head] ?? null;
      bar.hidden = marks === null;
      bar.classList.toggle("is-unscreened", marks !== null && mark === null);
      const fill = /** @type {HTMLElement} */ (bar.firstChild);
      fill.style.width = mark ? `${Math.round(Math.abs(mark.share) * 100)}%` : "0";
      fill.style.background = mark ? mark.colour : "";
    }));
    this.attributionLegend.hidden = marks === null;
    this.attributionLegend.textContent = marks === null ? "" : `bars: ${what}, each head's share of the largest (` +
      `${signed ? "orange: a lesion of the head harms the behaviour; blue: it helps; " : ""}dashed: not screened)`;
    this.labelCells();
  }

  /** Show which head is focused in the grid (a roving tab stop: the focused cell takes Tab). */
  markFocus() {
    const [layer, head] = this.model.get("focus");
    this.cells.forEach((row, l) => row.forEach((cell, hd) => {
      const on = l === layer && hd === head;
      cell.classList.toggle("is-focused", on);
      cell.setAttribute("aria-selected", String(on));
      cell.setAttribute("tabindex", on ? "0" : "-1");
    }));
  }

  /** Scroll the grid (and only the grid, not the notebook) so that the focused head is in view. */
  scrollToFocus() {
    const [layer, head] = this.model.get("focus");
    const cell = this.cells[layer]?.[head];
    if (!cell) return;
    const { grid } = this;
    const [top, left] = [cell.offsetTop, cell.offsetLeft];
    if (top < grid.scrollTop || top + cell.offsetHeight > grid.scrollTop + grid.clientHeight) {
      grid.scrollTop = top - (grid.clientHeight - cell.offsetHeight) / 2;
    }
    if (left < grid.scrollLeft || left + cell.offsetWidth > grid.scrollLeft + grid.clientWidth) {
      grid.scrollLeft = left - (grid.clientWidth - cell.offsetWidth) / 2;
    }
  }

  /** @param {number} layer @param {number} head */
  setFocus(layer, head) {
    const [l, hd] = this.model.get("focus");
    if (l === layer && hd === head) return;
    this.model.set("focus", [layer, head]);
    this.model.save_changes();
  }

  /** Ask for the focused head's pattern and draw it, max-pooled to the canvas's pixels. */
  fetchHead() {
    return this.guard("head", async () => {
      const [layer, head] = this.model.get("focus");
      const data = await this.heads.request({ layer, head });
      if (data === null || data.pattern === null) return;  // its layer is still to come
      const pattern = await decodeArray(data.pattern);
      const [l, hd] = this.model.get("focus");
      if (data.run !== this.shown.run || data.layer !== l || data.head !== hd) return;
      const n = pattern.shape[0];
      this.pattern = { data: /** @type {Uint8Array} */ (pattern.data), n, layer, head };
      const side = devicePixels(this.canvas.clientWidth || HEATMAP_PX);
      const drawn = drawHeatmap(this.canvas, this.pattern.data, n, n, TABLE, { causal: true, maxWidth: side, maxHeight: side });
      const at = (layer * this.shown.nHeads + head) * this.shown.scoreNames.length;
      const scores = this.shown.scoreNames.map((name, k) => `${name.replace("_", "-")} ${formatScore(this.shown.scores[at + k])}`);
      this.title.textContent = `attn.${layer} head ${head}${scores.length ? ": " : ""}${scores.join(", ")}`;
      const pooled = drawn.width < n ? `, each pixel the largest of ${(n / drawn.width).toFixed(1)} x ` +
                                       `${(n / drawn.width).toFixed(1)} cells` : "";
      this.canvas.setAttribute("aria-label", `attention pattern of layer ${layer} head ${head}: ${n} query rows ` +
                                             `by ${n} key columns${pooled}`);
      this.canvas.dataset.focus = `${layer},${head}`;
      this.canvas.dataset.run = String(data.run);
      this.canvas.dataset.version = String(data.version);
      this.errors.clear("head");
      this.shadeTokens();
    });
  }

  /** @param {MouseEvent} event */
  hoverCell(event) {
    if (!this.pattern) return;
    const { n, data } = this.pattern;
    const cell = cellAt(event, this.canvas, n, n);
    if (!cell || cell.col > cell.row) return;
    if (this.tokens.active !== cell.row) this.tokens.setActive(cell.row);
    const { tokens } = this.shown;
    this.readout.textContent = `query ${cell.row} ${JSON.stringify(tokens[cell.row])} → key ${cell.col} ` +
                               `${JSON.stringify(tokens[cell.col])}: ${(data[cell.row * n + cell.col] / 255).toFixed(3)}`;
  }

  /** Shade the token strip for the active token and the focused head. */
  shadeTokens() {
    const i = this.tokens.active;
    if (!this.pattern || i === null || i >= this.pattern.n) {
      this.tokens.shade([]);
      return;
    }
    const shades = tokenShades(this.pattern.data, this.pattern.n, i);
    this.tokens.shade(shadeColours(shades, i));
    let top = 0;
    shades.attends.forEach((v, j) => { if (v > shades.attends[top]) top = j; });
    this.readout.textContent = `${JSON.stringify(this.shown.tokens[i])} (position ${i}) attends most to ` +
                               `${JSON.stringify(this.shown.tokens[top])} (position ${top}): ${shades.attends[top].toFixed(3)}`;
  }

  /** Send an edited prompt: the kernel starts it at once, and `_progress` follows its layers. */
  submit(/** @type {string} */ text) {
    for (const slot of ["run", "overview", "head", "cancel"]) this.errors.clear(slot);
    return this.guard("run", async () => {
      this.status.textContent = "starting…";
      const data = await this.runs.request({ prompt: text });
      if (data === null) return;
      if (data.started) {
        if (data.run !== this.shown.run) this.clearShown(data.run);
      } else {
        this.status.textContent = `${data.n_tokens} tokens (unchanged)`;
      }
    });
  }

  /** Ask the kernel to stop the running prompt at its next layer. */
  cancel() {
    const { run } = this.model.get("_progress");
    this.cancelButton.disabled = true;
    return this.guard("cancel", async () => {
      this.status.textContent = "cancelling: the model stops at the end of this layer…";
      await this.cancels.request({ run });
    });
  }

  destroy() {
    if (this.stall !== null) clearTimeout(this.stall);
    super.destroy();
  }
}

export default mount(AttentionView);
