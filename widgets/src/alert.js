// @ts-check
// Errors shown inside the widget, as text: a kernel exception is never swallowed.

import { h } from "./dom.js";
import { KernelError, KernelLost } from "./wire.js";

/**
 * What to show for an error: one line, and the kernel's traceback when it sent one.
 * @param {any} error
 * @returns {{summary: string, detail: string}}
 */
export function describe(error) {
  if (error instanceof KernelError) return { summary: `${error.type}: ${error.message}`, detail: error.traceback };
  if (error instanceof Error) return { summary: `${error.name}: ${error.message}`, detail: "" };
  return { summary: `Error: ${String(error)}`, detail: "" };
}

/** A box of the current errors, one slot per kind of request (a newer error replaces its slot). */
export class ErrorBox {
  constructor() {
    this.el = h("div", { class: "llmscope-errors", role: "alert" });
    this.el.hidden = true;
    /** @type {Map<string, {summary: string, detail: string}>} */
    this.slots = new Map();
  }

  /** @param {string} slot @param {any} error */
  show(slot, error) {
    // a lost kernel is one message, whichever request ran into it
    this.slots.set(error instanceof KernelLost ? "kernel" : slot, describe(error));
    this.render();
  }

  /** @param {string} slot */
  clear(slot) {
    if (this.slots.delete(slot)) this.render();
  }

  render() {
    this.el.replaceChildren(...[...this.slots.values()].map(({ summary, detail }) => h(
      "div", { class: "llmscope-error" }, summary,
      detail && h("details", {}, h("summary", {}, "traceback"), h("pre", {}, detail)))));
    this.el.hidden = this.slots.size === 0;
  }
}

/**
 * Run `work`, showing its error in `slot` of `errors` instead of losing it (and clearing the
 * slot when it succeeds). Resolves to whether `work` succeeded.
 * @param {ErrorBox} errors @param {string} slot @param {() => Promise<void>} work
 * @returns {Promise<boolean>}
 */
export async function guard(errors, slot, work) {
  try {
    await work();
    errors.clear(slot);
    return true;
  } catch (error) {
    errors.show(slot, error);
    return false;
  }
}
