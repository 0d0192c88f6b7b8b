// AblationPanel: one gain slider per unit, head or group (0 lesions, 1 intact, up to 2
// stimulates), a zero / mean-ablation switch and a reset button; each move re-runs the model
// in the kernel and redraws the next-token distribution (baseline beside intervened) and a
// behaviour metric against its baseline.
//
// Kernel commands (llmscope/widgets/ablation.py): `_view` (everything shown, no model run) and
// `_move` ({factors, mode}: one run). Trait: `version` (bumped when Python changed the gains or
// the mode; this page then asks `_view` again). Slider moves are debounced here, and the
// Channel drops any answer but the newest.

import { ErrorBox, guard } from "./alert.js";
import { h } from "./dom.js";
import { showLost, watchKernel } from "./kernel.js";
import { debounce } from "./timing.js";
import { TokenStrip, displayText } from "./tokens.js";
import { Channel, decodeArray } from "./wire.js";

const MOVE_DEBOUNCE_MS = 60;
const VIEW_TIMEOUT_MS = 60_000;
const MOVE_TIMEOUT_MS = 300_000;  // a large model on a slow CPU
export const GAIN = { min: 0, max: 2, step: 0.05 };

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

/** A slider's value as a gain (snapped to the grid of `GAIN.step`, within the range). */
export function toGain(/** @type {string | number} */ value) {
  const v = Number(value);
  if (!Number.isFinite(v)) return NaN;
  const perUnit = Math.round(1 / GAIN.step);  // divide, not multiply: 19 / 20 is 0.95 exactly
  return Math.min(Math.max(Math.round(v * perUnit) / perUnit, GAIN.min), GAIN.max);
}

class AblationView {
  /** @param {any} model @param {HTMLElement} el @param {import("./wire.js").Invoke} invoke */
  constructor(model, el, invoke) {
    this.model = model;
    this.channels = {
      view: new Channel(invoke, "_view", { timeoutMs: VIEW_TIMEOUT_MS }),
      move: new Channel(invoke, "_move", { timeoutMs: MOVE_TIMEOUT_MS }),
    };
    this.errors = new ErrorBox();
    /** @type {HTMLInputElement[]} */
    this.sliders = [];
    /** @type {HTMLElement[]} */
    this.readouts = [];
    /** @type {string[]} */
    this.labels = [];
    this.modeName = `llmscope-mode-${Math.random().toString(36).slice(2)}`;
    this.build(el);
    this.moveSoon = debounce(() => this.move(), MOVE_DEBOUNCE_MS);
    this.unwatch = watchKernel(model, (error) => showLost(error, el, this.errors, Object.values(this.channels)));
    this.onVersion = () => this.refresh();
    model.on("change:version", this.onVersion);
    this.refresh();
  }

  /** @param {HTMLElement} el */
  build(el) {
    this.status = h("div", { class: "llmscope-status", role: "status" });
    this.sliderBox = h("div", { class: "llmscope-sliders", role: "group", "aria-label": "gain of each unit" });
    /** @type {Record<string, HTMLInputElement>} */
    this.modes = {};
    const modeBox = h("div", { class: "llmscope-modes", role: "radiogroup", "aria-label": "what a gain below 1 moves towards" },
      ...[["zero", "zero ablation"], ["mean", "mean ablation"]].map(([value, text]) => {
        const input = /** @type {HTMLInputElement} */ (h("input", { type: "radio", name: this.modeName, value }));
        this.modes[value] = input;
        input.addEventListener("change", () => this.moveSoon());
        return h("label", {}, input, ` ${text}`);
      }));
    this.resetButton = h("button", { type: "button", class: "llmscope-reset" }, "reset (all ×1)");
    this.resetButton.addEventListener("click", () => this.reset());
    this.metric = h("div", { class: "llmscope-metric", "aria-live": "polite" });
    this.dist = h("div", { class: "llmscope-dist", role: "table", "aria-label": "next-token probabilities" });
    this.context = new TokenStrip({ label: "the context the next token is predicted from", onActive: () => {} });
    el.replaceChildren(h("div", { class: "llmscope llmscope-ablation" },
      this.errors.el,
      h("div", { class: "llmscope-columns" },
        h("div", { class: "llmscope-column llmscope-controls" }, this.sliderBox, modeBox, this.resetButton, this.status),
        h("div", { class: "llmscope-column llmscope-results" }, this.metric,
          h("div", { class: "llmscope-legend" }, h("span", { class: "llmscope-key is-base" }, "baseline"),
            h("span", { class: "llmscope-key is-now" }, "intervened")),
          this.dist, h("div", { class: "llmscope-axes" }, "context (the next token follows its last token):"),
          this.context.el))));
  }

  /** Run `work`, showing its error (in `slot`) inside the widget; a failure also clears the status. */
  async guard(/** @type {string} */ slot, /** @type {() => Promise<void>} */ work) {
    if (!(await guard(this.errors, slot, work))) this.status.textContent = "";
  }

  /** @param {string[]} labels */
  buildSliders(labels) {
    this.labels = labels;
    this.sliders = [];
    this.readouts = [];
    this.sliderBox.replaceChildren(...labels.map((label, i) => {
      const input = /** @type {HTMLInputElement} */ (h("input", {
        type: "range", min: GAIN.min, max: GAIN.max, step: GAIN.step, value: 1, "data-index": i,
        "aria-label": `gain of ${label}: 0 lesions, 1 intact, 2 doubles`,
        // JupyterLab's command-mode shortcuts would otherwise take the arrow keys from the slider
        "data-lm-suppress-shortcuts": "true",
      }));
      const out = h("output", { class: "llmscope-gain" });
      input.addEventListener("input", () => {
        out.textContent = describeGain(toGain(input.value));
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
      const data = await this.channels.view.request();
      if (data !== null) await this.show(data, true);
    });
  }

  /** Send every gain and the mode; the kernel runs the model once and answers. */
  move() {
    const factors = this.sliders.map((s) => toGain(s.value));
    const mode = this.modes.mean.checked ? "mean" : "zero";
    return this.guard("move", async () => {
      this.status.textContent = "running the model…";
      const started = performance.now();
      const data = await this.channels.move.request({ factors, mode });
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

  destroy() {
    this.unwatch();
    this.model.off("change:version", this.onVersion);
    this.moveSoon.cancel();
    Object.values(this.channels).forEach((channel) => channel.cancel());
  }
}

export default {
  /** @param {{model: any, el: HTMLElement, experimental: {invoke: import("./wire.js").Invoke}}} props */
  render({ model, el, experimental }) {
    const view = new AblationView(model, el, experimental.invoke);
    return () => view.destroy();
  },
};
