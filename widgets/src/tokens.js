// @ts-check
// A strip of token text, one span per token, written with textContent only. Hovering a token
// or moving along the strip with the arrow keys makes it the active one.

import { h, indexIn } from "./dom.js";

/**
 * How a token's text is shown: invisible characters made visible, never interpreted. A line
 * break is ↵ and a tab ⇥; spaces at either end are ␣ (a lone-space token, or the space BPE
 * tokens start with, would otherwise show as nothing); an empty token is ∅.
 * @param {string} text
 */
export function displayText(text) {
  const shown = String(text).replace(/\r?\n/g, "↵").replace(/\t/g, "⇥")
    .replace(/^ +| +$/g, (spaces) => "␣".repeat(spaces.length));
  return shown === "" ? "∅" : shown;
}

/** Where the arrow keys move along `n` tokens from `index`, or null for another key. */
export function stepToken(/** @type {number | null} */ index, /** @type {string} */ key, /** @type {number} */ n) {
  const from = index ?? -1;
  const to = { ArrowLeft: from - 1, ArrowRight: from + 1, Home: 0, End: n - 1 }[key];
  return to === undefined || n === 0 ? null : Math.min(Math.max(to, 0), n - 1);
}

export class TokenStrip {
  /** @param {{label: string, onActive: (index: number | null) => void}} options */
  constructor({ label, onActive }) {
    this.el = h("div", { class: "llmscope-tokens", role: "group", "aria-label": label });
    /** @type {HTMLElement[]} */
    this.spans = [];
    /** @type {number | null} */
    this.active = null;
    this.onActive = onActive;
    this.el.addEventListener("mouseover", (e) => {
      const i = indexIn(e.target, this.el, ".llmscope-token");
      if (i !== null && i !== this.active) this.setActive(i);
    });
    this.el.addEventListener("keydown", (e) => {
      const i = stepToken(this.active, e.key, this.spans.length);
      if (i === null) return;
      e.preventDefault();
      this.setActive(i);
      this.spans[i].focus();
    });
    this.el.addEventListener("focusin", (e) => {
      const i = indexIn(e.target, this.el, ".llmscope-token");
      if (i !== null && i !== this.active) this.setActive(i);
    });
  }

  /** @param {string[]} texts @param {number} nBos how many leading tokens the model prepended */
  setTokens(texts, nBos) {
    this.spans = texts.map((text, i) => h("span", {
      class: i < nBos ? "llmscope-token is-bos" : "llmscope-token", "data-index": i, tabindex: i === 0 ? 0 : -1,
      title: `position ${i}: ${JSON.stringify(text)}`,
    }, displayText(text)));
    this.el.replaceChildren(...this.spans);
    this.active = null;
  }

  /** @param {number | null} index */
  setActive(index) {
    if (this.active !== null) {
      this.spans[this.active]?.classList.remove("is-active");
      this.spans[this.active]?.setAttribute("tabindex", "-1");
    }
    this.active = index;
    if (index !== null) {
      this.spans[index].classList.add("is-active");
      this.spans[index].setAttribute("tabindex", "0");
    }
    this.onActive(index);
  }

  /** @param {Array<string | null>} colours one CSS background per token (null: none) */
  shade(colours) {
    this.spans.forEach((span, i) => { span.style.backgroundColor = colours[i] ?? ""; });
  }
}
