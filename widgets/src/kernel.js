// @ts-check
// A widget outlives its kernel: after a restart or a crash the page still shows it, but the new
// kernel knows nothing of it and will never answer. Say so at once, in the widget, instead of
// leaving each request to run into its timeout (a minute, for a model run).

import { KernelLost } from "./wire.js";

/**
 * Statuses of a Jupyter kernel after which the kernel-side half of a widget is gone. A widget
 * is drawn by a running kernel, so "starting" is a new kernel: the page sees only that when the
 * restart came from elsewhere (another tab, the REST API). "unknown" is not here: the
 * websocket dropped, and a reconnection finds the same kernel, widgets and all.
 */
export const LOST_STATUSES = new Set(["restarting", "autorestarting", "starting", "dead"]);

/**
 * Call `onLost(error)` once, when the kernel behind `model` restarts or dies. JupyterLab and
 * Notebook 7 expose the kernel on the widget manager: its status tells within a second of a
 * crash or of a restart from this page, and as soon as the new kernel starts after any other
 * restart. Elsewhere ipywidgets' `comm_live_update` (the widget's connection dropped) is the
 * only sign. Returns a function that stops watching.
 * @param {any} model an anywidget model
 * @param {(error: KernelLost) => void} onLost
 * @returns {() => void}
 */
export function watchKernel(model, onLost) {
  const kernel = model.widget_manager?.kernel;
  const signal = typeof kernel?.statusChanged?.connect === "function" ? kernel.statusChanged : null;
  const onStatus = (/** @type {unknown} */ _sender, /** @type {string} */ status) => {
    if (LOST_STATUSES.has(status)) lost(status);
  };
  const onDisconnect = () => lost("disconnected");
  const stop = () => {
    signal?.disconnect(onStatus);
    model.off("comm_live_update", onDisconnect);
  };
  const lost = (/** @type {string} */ status) => {
    stop();
    onLost(new KernelLost(status));
  };
  signal?.connect(onStatus);
  model.on("comm_live_update", onDisconnect);
  return stop;
}

/**
 * Put a widget in its "kernel lost" state: every channel fails at once with `error` (shown by
 * `errors`), and the controls inside `root` are disabled, so nothing looks live that is not.
 * @param {KernelLost} error @param {HTMLElement} root
 * @param {import("./alert.js").ErrorBox} errors @param {Iterable<import("./wire.js").Channel>} channels
 */
export function showLost(error, root, errors, channels) {
  for (const channel of channels) channel.close(error);
  errors.show("kernel", error);
  root.classList.add("is-lost");
  root.querySelectorAll("input, textarea, button, select").forEach((control) => {
    /** @type {HTMLInputElement} */ (control).disabled = true;
  });
}
