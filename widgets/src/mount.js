// @ts-check
// What every widget view shares: its channels to the kernel, its error box, its model
// listeners and debounced calls (all undone by destroy()), the kernel watch, and the render
// entry point anywidget calls.

import { ErrorBox, guard } from "./alert.js";
import { showLost, watchKernel } from "./kernel.js";
import { debounce } from "./timing.js";
import { Channel } from "./wire.js";

/** @typedef {import("./wire.js").Invoke} Invoke */

export class View {
  /** @param {any} model an anywidget model @param {HTMLElement} el @param {Invoke} invoke */
  constructor(model, el, invoke) {
    this.model = model;
    this.el = el;
    this.invoke = invoke;
    this.errors = new ErrorBox();
    /** @type {Channel[]} */
    this.channels = [];
    /** @type {Array<{cancel: () => void}>} */
    this.timers = [];
    /** @type {Array<[string, (...args: any[]) => void]>} */
    this.listeners = [];
    /** a line of what the widget is doing; a failed request empties it */
    this.status = document.createElement("div");
    this.status.className = "llmscope-status";
    this.status.setAttribute("role", "status");
  }

  /** A channel for the kernel command `command` (see wire.js), cancelled on destroy. */
  channel(/** @type {string} */ command, /** @type {number} */ timeoutMs = 60_000) {
    const channel = new Channel(this.invoke, command, { timeoutMs });
    this.channels.push(channel);
    return channel;
  }

  /**
   * `fn` debounced by `ms` (see timing.js), cancelled on destroy.
   * @template {any[]} A @param {(...args: A) => void} fn @param {number} ms
   */
  soon(fn, ms) {
    const debounced = debounce(fn, ms);
    this.timers.push(debounced);
    return debounced;
  }

  /** Listen to the model's `event` until destroy. */
  on(/** @type {string} */ event, /** @type {(...args: any[]) => void} */ fn) {
    this.model.on(event, fn);
    this.listeners.push([event, fn]);
  }

  /**
   * Run `work`, showing its error in `slot` of the error box instead of losing it (a failure
   * also empties the status line). Resolves to whether `work` succeeded.
   * @param {string} slot @param {() => Promise<void>} work
   */
  async guard(slot, work) {
    const ok = await guard(this.errors, slot, work);
    if (!ok) this.status.textContent = "";
    return ok;
  }

  /** The kernel is gone: say so, fail every request at once, disable the controls. */
  lost(/** @type {import("./wire.js").KernelLost} */ error) {
    showLost(error, this.el, this.errors, this.channels);
  }

  destroy() {
    for (const [event, fn] of this.listeners) this.model.off(event, fn);
    for (const timer of this.timers) timer.cancel();
    for (const channel of this.channels) channel.cancel();
  }
}

/**
 * Keep the notebook's shortcuts off the keys pressed in `el`. JupyterLab and Notebook 7 match
 * a key against their shortcuts from the focused element up, and stop at an element that
 * carries `data-lm-suppress-shortcuts`; their command-mode bindings match the focused element
 * itself (Notebook 7 takes the arrow keys to move between cells), so every element that takes
 * the focus gets the attribute as it does: the grid's cells, the token strips, the sliders and
 * the canvas, built now or later.
 * @param {HTMLElement} el
 */
export function keepKeys(el) {
  el.setAttribute("data-lm-suppress-shortcuts", "true");
  el.addEventListener("focusin", (event) => {
    if (event.target instanceof Element) event.target.setAttribute("data-lm-suppress-shortcuts", "true");
  });
}

/**
 * The anywidget module of a widget whose view is `ViewClass`: it renders into `el`, keeps the
 * keys pressed in it (keepKeys), and watches the kernel.
 * @param {new (model: any, el: HTMLElement, invoke: Invoke) => View} ViewClass
 */
export function mount(ViewClass) {
  return {
    /** @param {{model: any, el: HTMLElement, experimental: {invoke: Invoke}}} props */
    render({ model, el, experimental }) {
      keepKeys(el);
      const view = new ViewClass(model, el, experimental.invoke);
      const unwatch = watchKernel(model, (error) => view.lost(error));
      return () => {
        unwatch();
        view.destroy();
      };
    },
  };
}
