// @ts-check
// Debounce: ipywidgets has none, and typing or dragging must not send one request per event.

/**
 * `fn` called once, `ms` after the last of a burst of calls, with that call's arguments.
 * The returned function has `cancel()` (forget the pending call) and `flush()` (make it now).
 * @template {any[]} A
 * @param {(...args: A) => void} fn @param {number} ms
 * @returns {((...args: A) => void) & {cancel: () => void, flush: () => void}}
 */
export function debounce(fn, ms) {
  /** @type {ReturnType<typeof setTimeout> | null} */
  let timer = null;
  /** @type {A | null} */
  let pending = null;
  const run = () => {
    const args = pending;
    timer = null;
    pending = null;
    if (args) fn(...args);
  };
  const debounced = (/** @type {A} */ ...args) => {
    pending = args;
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(run, ms);
  };
  debounced.cancel = () => {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    pending = null;
  };
  debounced.flush = () => {
    if (timer !== null) clearTimeout(timer);
    run();
  };
  return debounced;
}
