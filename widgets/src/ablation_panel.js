// @ts-check
// AblationPanel: one gain slider per unit, head or group (0 lesions, 1 intact, up to 2
// stimulates), a zero / mean-ablation switch and a reset button; each move re-runs the model
// in the kernel and redraws the next-token distribution (baseline beside intervened) and a
// behaviour metric against its baseline.
//
// Kernel commands (llmscope/widgets/ablation.py): `_view` (everything shown, no model run) and
// `_move` ({factors, mode}: one run). Traits: `_meta` (the gain range and step, set once) and
// `version` (bumped when Python changed the gains or the mode; this page then asks `_view`
// again). Slider moves are debounced here, and the Channel drops any answer but the newest.

import { h } from "./dom.js";
import { View, mount } from "./mount.js";
import { TokenStrip, displayText } from "./tokens.js";
import { decodeArray } from "./wire.js";

const MOVE_DEBOUNCE_MS = 60;
const MOVE_TIMEOUT_MS = 300_000;  // a large model on a slow CPU

/** @typedef {{min: number, max: number, step: number}} GainRange the sliders' range, from the kernel's `_meta` */

/** A gain as the slider's readout: "×0.50", and what it does. */
export function describeGain(/** @type {number} */ f) {
  const what = f === 0 ? "lesioned" : f === 1 ? "intact" : f > 1 ? "stimulated" : "weakened";
  return `×${f.toFixed(2)} ${what}`;
}

/**
 * The metric line: its name, value, baseline and change (a NaN as "–").
 * @param {{name: string, base: number | null, now: number | null}} metric
 */
export function metricText({ name, base, now }) {
  const f = (/** @type {number | null} */ x) => (x === null || !Number.isFinite(x) ? "–" : x.toFixed(3));
  const delta = base !== null && now !== null && Number.isFinite(base) && Number.isFinite(now) ? now - base : NaN;
  const sign = delta > 0 ? "+" : "";
  const label = name === "logit_diff" ? "logit difference (good − bad)" : "loss (nats)";
  return `${label}: ${f(now)}  baseline ${f(base)}  change ${Number.isFinite(delta) ? sign + delta.toFixed(3) : "–"}`;
}

/**
 * Rows of the distribution chart, most probable first (by the larger of the two).
 * @param {ArrayLike<number>} ids @param {string[]} texts @param {ArrayLike<number>} base @param {ArrayLike<number>} now
 * @returns {Array<{id: number, text: string, base: number, now: number}>}
 */
export function distributionRows(ids, texts, base, now) {
  return Array.from(ids, (id, i) => ({ id, text: texts[i], base: base[i], now: now[i] }))
    .sort((a, b) => Math.max(b.base, b.now) - Math.max(a.base, a.now));
}

/** A probability as a percentage with a bar width in 0..100. */
export function percent(/** @type {number} */ p) {
  const v = Number.isFinite(p) ? Math.min(Math.max(p, 0), 1) * 100 : 0;
  return { width: v, text: `${v < 10 ? v.toFixed(1) : v.toFixed(0)}%` };
}

/** A slider's value as a gain (snapped to the grid of `range.step`, within the range). */
export function toGain(/** @type {string | number} */ value, /** @type {GainRange} */ range) {
  const v = Number(value);
  if (!Number.isFinite(v)) return NaN;
  const perUnit = Math.round(1 / range.step);  // divide, not multiply: 19 / 20 is 0.95 exactly
  return Math.min(Math.max(Math.round(v * perUnit) / perUnit, range.min), range.max);
}

class AblationView extends View {
  /** @param {any} model @param {HTMLElement} el @param {import("./wire.js").Invoke} invoke */
  constructor(model, el, invoke) {
    super(model, el, invoke);
    this.views = this.channel("_view");
    this.moves = this.channel("_move", MOVE_TIMEOUT_MS);
    /** @type {GainRange} */
    this.range = model.get("_meta").gain;
    /** @type {HTMLInputElement[]} */
    this.sliders = [];
    /** @type {HTMLElement[]} */
    this.readouts = [];
    /** @type {string[]} */
    this.labels = [];
    const modeName = `llmscope-mode-${Math.random().toString(36).slice(2)}`;
    this.sliderBox = h("div", { class: "llmscope-sliders", role: "group", "aria-label": "gain of each unit" });
    /** @type {Record<string, HTMLInputElement>} */
    this.modes = {};
    const modeBox = h("div", { class: "llmscope-modes", role: "radiogroup", "aria-label": "what a gain below 1 moves towards" },
      ...[["zero", "zero ablation"], ["mean", "mean ablation"]].map(([value, text]) => {
        const input = /** @type {HTMLInputElement} */ (h("input", { type: "radio", name: modeName, value }));
        this.modes[value] = input;
        input.addEventListener("change", () => this.moveSoon());
        return h("label", {}, input, ` ${text}`);
      }));
    const resetButton = h("button", { type: "button", class: "llmscope-reset" }, "reset (all ×1)");
    resetButton.addEventListener("click", () => this.reset());
    this.metric = h("div", { class: "llmscope-metric", "aria-live": "polite" });
    this.dist = h("div", { class: "llmscope-dist", role: "table", "aria-label": "next-token probabilities" });
    this.context = new TokenStrip({ label: "the context the next token is predicted from", onActive: () => {} });
    el.replaceChildren(h("div", { class: "llmscope llmscope-ablation" },
      this.errors.el,
      h("div", { class: "llmscope-columns" },
        h("div", { class: "llmscope-column llmscope-controls" }, this.sliderBox, modeBox, resetButton, this.status),
        h("div", { class: "llmscope-column llmscope-results" }, this.metric,
          h("div", { class: "llmscope-legend" }, h("span", { class: "llmscope-key is-base" }, "baseline"),
            h("span", { class: "llmscope-key is-now" }, "intervened")),
          this.dist, h("div", { class: "llmscope-axes" }, "context (the next token follows its last token):"),
          this.context.el))));
    this.moveSoon = this.soon(() => this.move(), MOVE_DEBOUNCE_MS);
    this.on("change:version", () => this.refresh());
    this.refresh();
  }

  /** @param {string[]} labels */
  buildSliders(labels) {
    const { min, max, step } = this.range;
    this.labels = labels;
    this.sliders = [];
    this.readouts = [];
    this.sliderBox.replaceChildren(...labels.map((label, i) => {
      const input = /** @type {HTMLInputElement} */ (h("input", {
        type: "range", min, max, step, value: 1, "data-index": i,
        "aria-label": `gain of ${label}: ${min} lesions, 1 intact, up to ${max} stimulates`,
      }));
      const out = h("output", { class: "llmscope-gain" });
      input.addEventListener("input", () => {
        out.textContent = describeGain(toGain(input.value, this.range));
        input.setAttribute("aria-valuetext", out.textContent);
        this.moveSoon();
      });
      this.sliders.push(input);
      this.readouts.push(out);
      return h("div", { class: "llmscope-slider" }, h("span", { class: "llmscope-unit" }, displayText(label)), input, out);
    }));
  }

  /** Ask what the kernel shows now (after a change made from Python, or on first paint). */
  refresh() {
    return this.guard("view", async () => {
      this.status.textContent = "loading…";
      const data = await this.views.request();
      if (data !== null) await this.show(data, true);
    });
  }

  /** Send every gain and the mode; the kernel runs the model once and answers. */
  move() {
    const factors = this.sliders.map((s) => toGain(s.value, this.range));
    const mode = this.modes.mean.checked ? "mean" : "zero";
    return this.guard("move", async () => {
      this.status.textContent = "running the model…";
      const started = performance.now();
      const data = await this.moves.request({ factors, mode });
      if (data === null) return;
      await this.show(data, false);
      this.status.textContent += ` · ${Math.round(performance.now() - started)} ms`;
    });
  }

  reset() {
    this.sliders.forEach((s) => { s.value = "1"; });
    this.moveSoon.cancel();
    return this.move();
  }

  /** Redraw from a reply of `_view` or `_move`; `syncControls` moves the sliders to the kernel's gains. */
  async show(/** @type {any} */ data, /** @type {boolean} */ syncControls) {
    const [ids, base, now] = await Promise.all([data.ids, data.base, data.now].map(decodeArray));
    if (data.labels.join("\u0000") !== this.labels.join("\u0000")) this.buildSliders(data.labels);
    data.factors.forEach((/** @type {number} */ f, /** @type {number} */ i) => {
      if (syncControls) this.sliders[i].value = String(f);
      this.readouts[i].textContent = describeGain(f);
      this.sliders[i].setAttribute("aria-valuetext", this.readouts[i].textContent);
    });
    if (syncControls) this.modes[data.mode].checked = true;
    this.metric.textContent = metricText(data.metric);
    const rows = distributionRows(ids.data, data.texts, base.data, now.data);
    this.dist.replaceChildren(...rows.map((row) => {
      const [b, n] = [percent(row.base), percent(row.now)];
      return h("div", { class: "llmscope-dist-row", role: "row", title: `token id ${row.id}` },
        h("span", { class: "llmscope-dist-token", role: "cell" }, displayText(row.text)),
        h("span", { class: "llmscope-bars", role: "cell" },
          h("i", { class: "llmscope-bar is-base", style: `width: ${b.width}%` }),
          h("i", { class: "llmscope-bar is-now", style: `width: ${n.width}%` })),
        h("span", { class: "llmscope-dist-p", role: "cell" }, `${b.text} → ${n.text}`));
    }));
    this.dist.dataset.factors = data.factors.join(",");
    this.dist.dataset.top = rows.length ? String(rows[0].id) : "";
    this.context.setTokens(data.context, data.n_bos);
    const off = data.factors.filter((/** @type {number} */ f) => f !== 1).length;
    this.status.textContent = `${data.model}, ${data.mode} mode: ${off ? `${off} of ${data.factors.length} off ×1` : "all intact"}`;
  }
}

export default mount(AblationView);
