// AttentionMap: every layer x head of a model as thumbnails labelled with their head scores,
// one focused head as a query x key heatmap fetched on demand, the prompt's tokens shaded by
// where the hovered token attends, and a prompt box that re-runs the model in the kernel.
//
// Kernel commands (llmscope/widgets/attention.py): `_overview` (thumbnails, scores, tokens),
// `_head` (one head's pattern), `_run` (a new prompt). Traits: `prompt`, `focus` ([layer,
// head], set here when a head is picked), `version` (bumped by the kernel when the prompt
// changes; this page then asks for the overview again).

import { ErrorBox } from "./alert.js";
import { MAPS, css, lut } from "./colormap.js";
import { h, indexIn } from "./dom.js";
import { cellAt, drawHeatmap } from "./heatmap.js";
import { showLost, watchKernel } from "./kernel.js";
import { debounce } from "./timing.js";
import { TokenStrip } from "./tokens.js";
import { Channel, decodeArray } from "./wire.js";

const PROMPT_DEBOUNCE_MS = 400;
const FOCUS_DEBOUNCE_MS = 40;
const FETCH_TIMEOUT_MS = 60_000;
const RUN_TIMEOUT_MS = 300_000;  // a long prompt through a large model on a slow CPU
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

/** A score in 0..1 as ".92" (NaN, no score on this prompt, as "–"). */
export function formatScore(/** @type {number} */ x) {
  return Number.isFinite(x) ? x.toFixed(2).replace(/^0\./, ".") : "–";
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

class AttentionView {
  /** @param {any} model @param {HTMLElement} el @param {import("./wire.js").Invoke} invoke */
  constructor(model, el, invoke) {
    this.model = model;
    this.channels = {
      overview: new Channel(invoke, "_overview", { timeoutMs: FETCH_TIMEOUT_MS }),
      head: new Channel(invoke, "_head", { timeoutMs: FETCH_TIMEOUT_MS }),
      run: new Channel(invoke, "_run", { timeoutMs: RUN_TIMEOUT_MS }),
    };
    this.errors = new ErrorBox();
    /** what the kernel sent for the current prompt */
    this.shown = { version: -1, nLayers: 0, nHeads: 0, tokens: /** @type {string[]} */ ([]),
                   scores: new Float32Array(0), scoreNames: /** @type {string[]} */ ([]) };
    /** @type {{data: Uint8Array, n: number, layer: number, head: number} | null} */
    this.pattern = null;
    /** @type {HTMLElement[][]} */
    this.cells = [];
    this.build(el);
    this.submitSoon = debounce((/** @type {string} */ text) => this.submit(text), PROMPT_DEBOUNCE_MS);
    this.fetchHeadSoon = debounce(() => this.fetchHead(), FOCUS_DEBOUNCE_MS);
    this.unwatch = watchKernel(model, (error) => showLost(error, el, this.errors, Object.values(this.channels)));
    this.listeners = {
      "change:version": () => this.refresh(),
      "change:focus": () => { this.markFocus(); this.fetchHeadSoon(); },
      "change:prompt": () => this.syncPrompt(),
    };
    for (const [event, fn] of Object.entries(this.listeners)) model.on(event, fn);
    this.syncPrompt();
    this.refresh();
  }

  /** @param {HTMLElement} el */
  build(el) {
    this.promptBox = /** @type {HTMLTextAreaElement} */ (h("textarea", {
      class: "llmscope-prompt", rows: 3, spellcheck: "false", placeholder: "a prompt: the model reads it as you type",
      "aria-label": "prompt: editing it runs the model again",
    }));
    this.status = h("div", { class: "llmscope-status", role: "status" });
    this.grid = h("div", {
      class: "llmscope-grid", role: "grid",
      "aria-label": "attention heads, a row per layer and a column per head: click one, or move with the arrow keys",
    });
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
        h("div", { class: "llmscope-column" }, this.promptBox, this.status, this.grid),
        h("div", { class: "llmscope-column llmscope-focus" }, this.title,
          h("div", { class: "llmscope-axes" }, "rows: query token · columns: key token it attends to"),
          this.canvas, this.readout,
          h("div", { class: "llmscope-legend" }, swatch(MAPS.blues, "where the token attends"),
            swatch(MAPS.oranges, "what attends to it")),
          this.tokens.el))));
    this.promptBox.addEventListener("input", () => this.submitSoon(this.promptBox.value));
    this.grid.addEventListener("click", (e) => {
      const cell = e.target instanceof Element ? e.target.closest(".llmscope-cell") : null;
      if (cell) this.setFocus(Number(cell.getAttribute("data-layer")), Number(cell.getAttribute("data-head")));
    });
    this.grid.addEventListener("keydown", (e) => {
      const to = moveFocus(this.model.get("focus"), e.key, this.shown.nLayers, this.shown.nHeads);
      if (!to) return;
      e.preventDefault();
      this.setFocus(...to);
      this.cells[to[0]]?.[to[1]]?.focus();
    });
    this.canvas.addEventListener("mousemove", (e) => this.hoverCell(e));
  }

  /** Run `work`, showing its error (in `slot`) inside the widget instead of losing it. */
  async guard(/** @type {string} */ slot, /** @type {() => Promise<void>} */ work) {
    try {
      await work();
    } catch (error) {
      this.errors.show(slot, error);
      this.status.textContent = "";
    }
  }

  syncPrompt() {
    const prompt = this.model.get("prompt");
    if (this.promptBox.value !== prompt && document.activeElement !== this.promptBox) this.promptBox.value = prompt;
  }

  /** Ask for the thumbnails, scores and tokens of the kernel's current prompt; redraw. */
  refresh() {
    return this.guard("overview", async () => {
      this.status.textContent = "loading…";
      const data = await this.channels.overview.request();
      if (data === null) return;
      const [thumbs, scores] = await Promise.all([decodeArray(data.thumbs), decodeArray(data.scores)]);
      if (data.version !== this.model.get("version")) return;  // the kernel moved on; a refresh follows
      const [nLayers, nHeads] = thumbs.shape;
      if (nLayers !== this.shown.nLayers || nHeads !== this.shown.nHeads) this.buildGrid(nLayers, nHeads);
      this.shown = { version: data.version, nLayers, nHeads, tokens: data.tokens,
                     scores: /** @type {Float32Array} */ (scores.data), scoreNames: data.score_names };
      this.paintThumbs(/** @type {Uint8Array} */ (thumbs.data), thumbs.shape[2]);
      this.tokens.setTokens(data.tokens, data.n_bos);
      this.readout.textContent = "";
      this.status.textContent = `${data.model}: ${data.tokens.length} tokens`;
      this.errors.clear("overview");
      this.markFocus();
      await this.fetchHead();
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
      h("canvas", { "aria-hidden": "true" }), h("span", { class: "llmscope-cell-label" }))));
    this.grid.replaceChildren(header, ...this.cells.map((row, layer) => h(
      "div", { class: "llmscope-grid-row", role: "row" },
      h("span", { class: "llmscope-axis", role: "rowheader" }, `attn.${layer}`), ...row)));
  }

  /** @param {Uint8Array} thumbs [layers, heads, t, t] @param {number} t */
  paintThumbs(thumbs, t) {
    const { nHeads, scores, scoreNames } = this.shown;
    const [previous, induction] = ["previous_token", "induction"].map((name) => scoreNames.indexOf(name));
    this.cells.forEach((row, layer) => row.forEach((cell, head) => {
      const at = layer * nHeads + head;
      drawHeatmap(/** @type {HTMLCanvasElement} */ (cell.firstChild), thumbs.subarray(at * t * t, (at + 1) * t * t),
                  t, t, TABLE);
      const p = scores[at * scoreNames.length + previous];
      const i = scores[at * scoreNames.length + induction];
      /** @type {HTMLElement} */ (cell.lastChild).textContent = `P ${formatScore(p)} I ${formatScore(i)}`;
      cell.setAttribute("aria-label", `layer ${layer}, head ${head}: previous-token score ${formatScore(p)}, ` +
                                      `induction score ${formatScore(i)}`);
    }));
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

  /** @param {number} layer @param {number} head */
  setFocus(layer, head) {
    const [l, hd] = this.model.get("focus");
    if (l === layer && hd === head) return;
    this.model.set("focus", [layer, head]);
    this.model.save_changes();
  }

  /** Ask for the focused head's pattern and draw it. */
  fetchHead() {
    return this.guard("head", async () => {
      const [layer, head] = this.model.get("focus");
      const data = await this.channels.head.request({ layer, head });
      if (data === null) return;
      const pattern = await decodeArray(data.pattern);
      const [l, hd] = this.model.get("focus");
      if (data.version !== this.shown.version || data.layer !== l || data.head !== hd) return;
      const n = pattern.shape[0];
      this.pattern = { data: /** @type {Uint8Array} */ (pattern.data), n, layer, head };
      drawHeatmap(this.canvas, this.pattern.data, n, n, TABLE, { causal: true });
      const at = (layer * this.shown.nHeads + head) * this.shown.scoreNames.length;
      const scores = this.shown.scoreNames.map((name, k) => `${name.replace("_", "-")} ${formatScore(this.shown.scores[at + k])}`);
      this.title.textContent = `attn.${layer} head ${head}: ${scores.join(", ")}`;
      this.canvas.setAttribute("aria-label", `attention pattern of layer ${layer} head ${head}: ${n} query rows ` +
                                             `by ${n} key columns`);
      this.canvas.dataset.focus = `${layer},${head}`;
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

  /** Send an edited prompt; the kernel bumps `version` when it took it, and refresh() follows. */
  submit(/** @type {string} */ text) {
    return this.guard("run", async () => {
      this.status.textContent = "running the model…";
      const data = await this.channels.run.request({ prompt: text });
      if (data === null) return;
      this.errors.clear("run");
      if (data.version === this.shown.version) this.status.textContent = `${data.n_tokens} tokens (unchanged)`;
    });
  }

  destroy() {
    this.unwatch();
    for (const [event, fn] of Object.entries(this.listeners)) this.model.off(event, fn);
    this.submitSoon.cancel();
    this.fetchHeadSoon.cancel();
    Object.values(this.channels).forEach((channel) => channel.cancel());
  }
}

export default {
  /** @param {{model: any, el: HTMLElement, experimental: {invoke: import("./wire.js").Invoke}}} props */
  render({ model, el, experimental }) {
    const view = new AttentionView(model, el, experimental.invoke);
    return () => view.destroy();
  },
};
