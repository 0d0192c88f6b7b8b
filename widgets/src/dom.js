// @ts-check
// Building elements without ever parsing markup: text goes in as Text nodes and attributes
// as strings, so token text such as `<img src=x onerror=...>` shows literally.

/**
 * A new element. `attrs` become attributes (`class` the class name; false or null leaves one
 * out; event-handler attributes are refused: listen with addEventListener). `children` are
 * nodes or strings; strings become Text nodes.
 * @param {string} tag
 * @param {Record<string, string | number | boolean | null | undefined>} [attrs]
 * @param {...(Node | string | null | undefined | false)} children
 * @returns {HTMLElement}
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (/^on/i.test(key)) throw new TypeError(`h() does not set event-handler attributes (${key})`);
    if (value === false || value === null || value === undefined) continue;
    if (key === "class") el.className = String(value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  el.append(.../** @type {Array<Node | string>} */ (children.filter((c) => c !== null && c !== undefined && c !== false && c !== "")));
  return el;
}

/**
 * The index stored in `data-index` of `target` or its nearest ancestor inside `root`, or null.
 * @param {EventTarget | null} target @param {Element} root @param {string} selector
 */
export function indexIn(target, root, selector) {
  const hit = target instanceof Element ? target.closest(selector) : null;
  return hit && root.contains(hit) ? Number(hit.getAttribute("data-index")) : null;
}
// x
