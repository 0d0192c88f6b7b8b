/* Built by esbuild from widgets/src (cd widgets && npm run build); do not edit. */

// src/colormap.js
var MAPS = {
  /** @type {Stops} */
  blues: [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]],
  /** @type {Stops} */
  oranges: [[255, 245, 235], [253, 208, 162], [253, 141, 60], [217, 72, 1], [127, 39, 4]],
  /** @type {Stops} */
  viridis: [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]]
};
var LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
function pack(r, g, b, a = 255) {
  return (LITTLE_ENDIAN ? a << 24 | b << 16 | g << 8 | r : r << 24 | g << 16 | b << 8 | a) >>> 0;
}
function colourAt(stops, x) {
  const t = Math.min(Math.max(Number.isFinite(x) ? x : 0, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(t), stops.length - 2);
  const f = t - i;
  return (
    /** @type {[number, number, number]} */
    stops[i].map((c, k) => Math.round(c + f * (stops[i + 1][k] - c)))
  );
}
function lut(stops, { gamma = 1 } = {}) {
  const table = new Uint32Array(256);
  for (let v = 0; v < 256; v++) table[v] = pack(...colourAt(stops, (v / 255) ** gamma));
  return table;
}
function css(stops, x, alpha = 1) {
  const [r, g, b] = colourAt(stops, x);
  return `rgba(${r}, ${g}, ${b}, ${alpha})`;
}

// src/dom.js
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (/^on/i.test(key)) throw new TypeError(`h() does not set event-handler attributes (${key})`);
    if (value === false || value === null || value === void 0) continue;
    if (key === "class") el.className = String(value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  el.append(.../** @type {Array<Node | string>} */
  children.filter((c) => c !== null && c !== void 0 && c !== false && c !== ""));
  return el;
}
function indexIn(target, root, selector) {
  const hit = target instanceof Element ? target.closest(selector) : null;
  return hit && root.contains(hit) ? Number(hit.getAttribute("data-index")) : null;
}

// src/heatmap.js
function pixelOf(i, n, m) {
  return Math.floor(i * m / n);
}
function firstCell(p, n, m) {
  return Math.ceil(p * n / m);
}
function fit(cells, pixels) {
  return Math.max(1, Math.min(cells, Math.floor(pixels)));
}
function poolMax(codes, width, height, cols, rows) {
  if (codes.length !== width * height) throw new RangeError(`${codes.length} codes for ${height} x ${width} cells`);
  if (cols === width && rows === height) return codes;
  const out = new Uint8Array(cols * rows);
  const column = new Uint32Array(width);
  for (let c = 0; c < width; c++) column[c] = pixelOf(c, width, cols);
  for (let r = 0, i = 0; r < height; r++) {
    const base = pixelOf(r, height, rows) * cols;
    for (let c = 0; c < width; c++, i++) {
      const v = codes[i];
      if (v > out[base + column[c]]) out[base + column[c]] = v;
    }
  }
  return out;
}
function fillPixels(pixels, codes, table, width, { causal = false, cells = width } = {}) {
  if (pixels.length !== codes.length) throw new RangeError(`${codes.length} codes for ${pixels.length} pixels`);
  for (let i = 0; i < codes.length; i++) pixels[i] = table[codes[i]];
  if (causal) {
    for (let row = 0; row * width < pixels.length; row++) {
      const lastCell = firstCell(row + 1, cells, width) - 1;
      let col = row + 1;
      while (col > 0 && firstCell(col, cells, width) > lastCell) col--;
      while (col < width && firstCell(col, cells, width) <= lastCell) col++;
      pixels.fill(0, row * width + col, (row + 1) * width);
    }
  }
  return pixels;
}
var frames = /* @__PURE__ */ new WeakMap();
function drawHeatmap(canvas, codes, width, height, table, { causal = false, maxWidth = width, maxHeight = height } = {}) {
  const cols = fit(width, maxWidth);
  const rows = fit(height, maxHeight);
  let frame = frames.get(canvas);
  if (!frame || frame.image.width !== cols || frame.image.height !== rows) {
    canvas.width = cols;
    canvas.height = rows;
    const context = (
      /** @type {CanvasRenderingContext2D} */
      canvas.getContext("2d")
    );
    const image = context.createImageData(cols, rows);
    frame = { image, context, pixels: new Uint32Array(image.data.buffer), codes: null, pooled: new Uint8Array(0) };
    frames.set(canvas, frame);
  }
  if (width * height === 0) {
    frame.pixels.fill(0);
  } else {
    if (frame.codes !== codes) {
      frame.pooled = poolMax(codes, width, height, cols, rows);
      frame.codes = codes;
    }
    fillPixels(frame.pixels, frame.pooled, table, cols, { causal, cells: width });
  }
  frame.context.putImageData(frame.image, 0, 0);
  return { width: cols, height: rows };
}
function cellAt(event, box, width, height) {
  const col = Math.floor(event.offsetX / box.clientWidth * width);
  const row = Math.floor(event.offsetY / box.clientHeight * height);
  return row >= 0 && row < height && col >= 0 && col < width ? { row, col } : null;
}
function devicePixels(box) {
  return Math.round(box * (globalThis.devicePixelRatio || 1));
}

// src/wire.js
var WireError = class extends Error {
  name = "WireError";
};
var KernelError = class extends Error {
  name = "KernelError";
  /** @param {{type?: string, message?: string, traceback?: string}} error */
  constructor(error) {
    super(String(error?.message ?? "the kernel reported an error without a message"));
    this.type = String(error?.type ?? "Error");
    this.traceback = error?.traceback ? String(error.traceback) : "";
  }
};
var KernelTimeout = class extends Error {
  name = "KernelTimeout";
  /** @param {string} command @param {number} ms */
  constructor(command, ms) {
    super(`the kernel did not answer "${command}" within ${Math.round(ms / 1e3)} s: it may still be busy, or it was restarted (run the widget's cell again)`);
  }
};
var KernelLost = class extends Error {
  name = "KernelLost";
  /** @param {string} status the kernel's status ("restarting", "starting", "dead"...) or "disconnected" */
  constructor(status) {
    const [what, todo] = {
      starting: ["the kernel was restarted outside this page", "Reload the page, then run its cell again."],
      dead: ["the kernel died", "Restart it and run its cell again."],
      disconnected: ["the connection to the kernel closed", "Run its cell again."]
    }[status] ?? ["the kernel restarted", "Run its cell again."];
    super(`${what}: this widget is no longer connected to Python. ${todo}`);
    this.status = status;
  }
};
function asBytes(buffer) {
  if (buffer instanceof ArrayBuffer) return new Uint8Array(buffer);
  if (ArrayBuffer.isView(buffer)) return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  throw new WireError(`expected a binary buffer, got ${typeof buffer}`);
}
function putBuffers(data, paths, buffers) {
  if (paths.length !== buffers.length) {
    throw new WireError(`the reply names ${paths.length} buffer paths but carries ${buffers.length} buffers`);
  }
  paths.forEach((path, i) => {
    let node = data;
    for (const key of path.slice(0, -1)) node = node?.[key];
    if (node === null || typeof node !== "object" || path.length === 0) {
      throw new WireError(`buffer path ${JSON.stringify(path)} does not exist in the reply`);
    }
    node[path[path.length - 1]] = buffers[i];
  });
  return data;
}
function float16ToFloat32(halves) {
  const out = new Float32Array(halves.length);
  for (let i = 0; i < halves.length; i++) {
    const h2 = halves[i];
    const sign = h2 & 32768 ? -1 : 1;
    const exponent = h2 >> 10 & 31;
    const fraction = h2 & 1023;
    if (exponent === 0) out[i] = sign * fraction * 2 ** -24;
    else if (exponent === 31) out[i] = fraction ? NaN : sign * Infinity;
    else out[i] = sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
  }
  return out;
}
var DTYPES = {
  uint8: { size: 1, view: (b) => b },
  int32: { size: 4, view: (b) => new Int32Array(b.buffer, b.byteOffset, b.byteLength / 4) },
  float32: { size: 4, view: (b) => new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4) },
  float16: {
    size: 2,
    view: (b) => float16ToFloat32(new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2))
  }
};
function unpackTril(packed, n, count) {
  const per = n * (n + 1) / 2;
  if (packed.length !== per * count) {
    throw new WireError(`a lower triangle of ${count} x ${n} x ${n} holds ${per * count} values, got ${packed.length}`);
  }
  const full = (
    /** @type {T} */
    new /** @type {any} */
    packed.constructor(count * n * n)
  );
  let src = 0;
  for (let m = 0; m < count; m++) {
    for (let row = 0; row < n; row++) {
      const start = m * n * n + row * n;
      full.set(packed.subarray(src, src + row + 1), start);
      src += row + 1;
    }
  }
  return full;
}
async function inflate(bytes) {
  const stream = new Blob([
    /** @type {Uint8Array<ArrayBuffer>} */
    bytes
  ]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}
async function decodeArray(payload) {
  const { dtype, shape, layout, compression } = payload;
  const kind = Object.hasOwn(DTYPES, dtype) ? DTYPES[
    /** @type {keyof typeof DTYPES} */
    dtype
  ] : null;
  if (!kind) throw new WireError(`unsupported dtype ${JSON.stringify(dtype)}; expected one of ${Object.keys(DTYPES)}`);
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new WireError(`bad shape ${JSON.stringify(shape)}`);
  }
  if (compression !== void 0 && compression !== "deflate") throw new WireError(`unknown compression ${compression}`);
  if (layout !== void 0 && layout !== "tril") throw new WireError(`unknown layout ${layout}`);
  let bytes = asBytes(payload.buffer);
  if (compression === "deflate") bytes = await inflate(bytes);
  if (bytes.byteLength % kind.size) throw new WireError(`${bytes.byteLength} bytes is not a whole number of ${dtype}`);
  let data = kind.view(bytes.byteOffset % kind.size ? bytes.slice() : bytes);
  const size = shape.reduce((a, b) => a * b, 1);
  if (layout === "tril") {
    const n = shape[shape.length - 1];
    if (shape.length < 2 || shape[shape.length - 2] !== n) throw new WireError(`a tril layout needs [..., n, n], got [${shape}]`);
    data = unpackTril(data, n, n ? size / (n * n) : 0);
  }
  if (data.length !== size) throw new WireError(`shape [${shape}] holds ${size} values, got ${data.length}`);
  return { data, shape };
}
var SUPERSEDED = /* @__PURE__ */ Symbol("superseded");
var MAX_REQUEST_BYTES = 8 * 2 ** 20;
var Channel = class {
  /** @param {Invoke} invoke @param {string} command @param {{timeoutMs?: number}} [options] */
  constructor(invoke, command, { timeoutMs = 6e4 } = {}) {
    this.invoke = invoke;
    this.command = command;
    this.timeoutMs = timeoutMs;
    this.seq = 0;
    this.inFlight = null;
    this.closed = null;
  }
  /**
   * Ask the kernel. Resolves to the reply's data (buffers in place), or to null when a newer
   * request made this one stale; rejects with a KernelError, KernelTimeout or WireError (also
   * for a request too large to send), or with the error the channel was closed with.
   * @param {object} [fields]
   * @returns {Promise<any>}
   */
  async request(fields = {}) {
    if (this.closed) throw this.closed;
    this.inFlight?.abort(SUPERSEDED);
    const seq = ++this.seq;
    const size = new TextEncoder().encode(JSON.stringify(fields)).length;
    if (size > MAX_REQUEST_BYTES) {
      throw new WireError(`a request to "${this.command}" of ${(size / 2 ** 20).toFixed(1)} MB is more than the ${MAX_REQUEST_BYTES / 2 ** 20} MB the kernel's websocket takes`);
    }
    const controller = new AbortController();
    this.inFlight = controller;
    const timer = AbortSignal.timeout(this.timeoutMs);
    let reply, buffers;
    try {
      [reply, buffers] = await this.invoke(
        this.command,
        { ...fields, seq },
        { signal: AbortSignal.any([controller.signal, timer]) }
      );
    } catch (error) {
      if (controller.signal.aborted) {
        if (controller.signal.reason === SUPERSEDED) return null;
        throw controller.signal.reason;
      }
      if (timer.aborted) throw new KernelTimeout(this.command, this.timeoutMs);
      throw error;
    } finally {
      if (this.inFlight === controller) this.inFlight = null;
    }
    if (seq !== this.seq) return null;
    return openReply(reply, buffers ?? [], seq);
  }
  /** Abort the request in flight, and drop any answer still to come. */
  cancel() {
    this.inFlight?.abort(SUPERSEDED);
    this.seq++;
  }
  /** Fail the request in flight, and every later one, with `error` (nothing will answer them). */
  close(error) {
    this.closed = error;
    this.inFlight?.abort(error);
  }
};
function openReply(reply, buffers, seq) {
  if (reply === null || typeof reply !== "object") throw new WireError(`the kernel's reply is not an object: ${reply}`);
  if (reply.ok === false) throw new KernelError(reply.error);
  if (reply.ok !== true) throw new WireError("the kernel's reply has no ok field");
  if (reply.seq !== seq) throw new WireError(`the answer to request ${seq} came back as ${reply.seq}`);
  return putBuffers(reply.data, reply.buffer_paths ?? [], buffers);
}

// src/alert.js
function describe(error) {
  if (error instanceof KernelError) return { summary: `${error.type}: ${error.message}`, detail: error.traceback };
  if (error instanceof Error) return { summary: `${error.name}: ${error.message}`, detail: "" };
  return { summary: `Error: ${String(error)}`, detail: "" };
}
var ErrorBox = class {
  constructor() {
    this.el = h("div", { class: "llmscope-errors", role: "alert" });
    this.el.hidden = true;
    this.slots = /* @__PURE__ */ new Map();
  }
  /** @param {string} slot @param {any} error */
  show(slot, error) {
    this.slots.set(error instanceof KernelLost ? "kernel" : slot, describe(error));
    this.render();
  }
  /** @param {string} slot */
  clear(slot) {
    if (this.slots.delete(slot)) this.render();
  }
  render() {
    this.el.replaceChildren(...[...this.slots.values()].map(({ summary, detail }) => h(
      "div",
      { class: "llmscope-error" },
      summary,
      detail && h("details", {}, h("summary", {}, "traceback"), h("pre", {}, detail))
    )));
    this.el.hidden = this.slots.size === 0;
  }
};
async function guard(errors, slot, work) {
  try {
    await work();
    errors.clear(slot);
    return true;
  } catch (error) {
    errors.show(slot, error);
    return false;
  }
}

// src/kernel.js
var LOST_STATUSES = /* @__PURE__ */ new Set(["restarting", "autorestarting", "starting", "dead"]);
function watchKernel(model, onLost) {
  const kernel = model.widget_manager?.kernel;
  const signal = typeof kernel?.statusChanged?.connect === "function" ? kernel.statusChanged : null;
  const onStatus = (_sender, status) => {
    if (LOST_STATUSES.has(status)) lost(status);
  };
  const onDisconnect = () => lost("disconnected");
  const stop = () => {
    signal?.disconnect(onStatus);
    model.off("comm_live_update", onDisconnect);
  };
  const lost = (status) => {
    stop();
    onLost(new KernelLost(status));
  };
  signal?.connect(onStatus);
  model.on("comm_live_update", onDisconnect);
  return stop;
}
function showLost(error, root, errors, channels) {
  for (const channel of channels) channel.close(error);
  errors.show("kernel", error);
  root.classList.add("is-lost");
  root.querySelectorAll("input, textarea, button, select").forEach((control) => {
    control.disabled = true;
  });
}

// src/timing.js
function debounce(fn, ms) {
  let timer = null;
  let pending = null;
  const run = () => {
    const args = pending;
    timer = null;
    pending = null;
    if (args) fn(...args);
  };
  const debounced = (...args) => {
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

// src/mount.js
var View = class {
  /** @param {any} model an anywidget model @param {HTMLElement} el @param {Invoke} invoke */
  constructor(model, el, invoke) {
    this.model = model;
    this.el = el;
    this.invoke = invoke;
    this.errors = new ErrorBox();
    this.channels = [];
    this.timers = [];
    this.listeners = [];
    this.status = document.createElement("div");
    this.status.className = "llmscope-status";
    this.status.setAttribute("role", "status");
  }
  /** A channel for the kernel command `command` (see wire.js), cancelled on destroy. */
  channel(command, timeoutMs = 6e4) {
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
  on(event, fn) {
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
  lost(error) {
    showLost(error, this.el, this.errors, this.channels);
  }
  destroy() {
    for (const [event, fn] of this.listeners) this.model.off(event, fn);
    for (const timer of this.timers) timer.cancel();
    for (const channel of this.channels) channel.cancel();
  }
};
function keepKeys(el) {
  el.setAttribute("data-lm-suppress-shortcuts", "true");
  el.addEventListener("focusin", (event) => {
    if (event.target instanceof Element) event.target.setAttribute("data-lm-suppress-shortcuts", "true");
  });
}
function mount(ViewClass) {
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
    }
  };
}

// src/tokens.js
function displayText(text) {
  const shown = String(text).replace(/\r?\n/g, "↵").replace(/\t/g, "⇥").replace(/^ +| +$/g, (spaces) => "␣".repeat(spaces.length));
  return shown === "" ? "∅" : shown;
}
function stepToken(index, key, n) {
  const from = index ?? -1;
  const to = { ArrowLeft: from - 1, ArrowRight: from + 1, Home: 0, End: n - 1 }[key];
  return to === void 0 || n === 0 ? null : Math.min(Math.max(to, 0), n - 1);
}
var TokenStrip = class {
  /** @param {{label: string, onActive: (index: number | null) => void}} options */
  constructor({ label, onActive }) {
    this.el = h("div", { class: "llmscope-tokens", role: "group", "aria-label": label });
    this.spans = [];
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
      class: i < nBos ? "llmscope-token is-bos" : "llmscope-token",
      "data-index": i,
      tabindex: i === 0 ? 0 : -1,
      title: `position ${i}: ${JSON.stringify(text)}`
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
    this.spans.forEach((span, i) => {
      span.style.backgroundColor = colours[i] ?? "";
    });
  }
};

// src/attention_map.js
var PROMPT_DEBOUNCE_MS = 400;
var FOCUS_DEBOUNCE_MS = 40;
var LAYER_DEBOUNCE_MS = 30;
var HEATMAP_PX = 360;
var TABLE = lut(MAPS.blues, { gamma: 0.5 });
function moveFocus([layer, head], key, nLayers, nHeads) {
  const clamp = (v, n) => Math.min(Math.max(v, 0), n - 1);
  const moves = {
    ArrowLeft: [layer, head - 1],
    ArrowRight: [layer, head + 1],
    ArrowUp: [layer - 1, head],
    ArrowDown: [layer + 1, head],
    Home: [layer, 0],
    End: [layer, nHeads - 1],
    PageUp: [0, head],
    PageDown: [nLayers - 1, head]
  };
  const to = moves[key];
  return to ? [clamp(to[0], nLayers), clamp(to[1], nHeads)] : null;
}
function stallMs(nTokens) {
  return 6e4 * Math.max(1, (nTokens / 1024) ** 2);
}
function formatScore(x) {
  return Number.isFinite(x) ? x.toFixed(2).replace(/^0\./, ".") : "–";
}
function formatShare(x) {
  return (x < 0 ? "−" : "") + formatScore(Math.abs(x));
}
function attributionMarks(values) {
  let largest = 0;
  for (const row of values) for (const v of row) if (v !== null && Number.isFinite(v)) largest = Math.max(largest, Math.abs(v));
  return values.map((row) => row.map((v) => {
    if (v === null || !Number.isFinite(v)) return null;
    const share = largest > 0 ? v / largest : 0;
    return { share, colour: css(share < 0 ? MAPS.blues : MAPS.oranges, 0.35 + 0.65 * Math.abs(share)) };
  }));
}
function tokenShades(pattern, n, i) {
  const attends = new Float32Array(n);
  const attendedBy = new Float32Array(n);
  for (let j = 0; j <= i; j++) attends[j] = pattern[i * n + j] / 255;
  for (let j = i; j < n; j++) attendedBy[j] = pattern[j * n + i] / 255;
  return { attends, attendedBy };
}
function shadeColours({ attends, attendedBy }, i) {
  return Array.from(attends, (a, j) => {
    const v = j <= i ? a : attendedBy[j];
    return v > 0 ? css(j <= i ? MAPS.blues : MAPS.oranges, 0.75, Math.sqrt(v)) : null;
  });
}
var AttentionView = class extends View {
  /** @param {any} model @param {HTMLElement} el @param {import("./wire.js").Invoke} invoke */
  constructor(model, el, invoke) {
    super(model, el, invoke);
    this.overviews = this.channel("_overview");
    this.heads = this.channel("_head");
    this.runs = this.channel("_run");
    this.cancels = this.channel("_cancel");
    this.shown = {
      run: -1,
      complete: false,
      painted: 0,
      nLayers: 0,
      nHeads: 0,
      tokens: (
        /** @type {string[]} */
        []
      ),
      scores: (
        /** @type {ArrayLike<number>} */
        new Float32Array(0)
      ),
      scoreNames: (
        /** @type {string[]} */
        []
      )
    };
    this.pattern = null;
    this.cells = [];
    this.stall = null;
    this.promptBox = /** @type {HTMLTextAreaElement} */
    h("textarea", {
      class: "llmscope-prompt",
      rows: 3,
      spellcheck: "false",
      placeholder: "a prompt: the model reads it as you type",
      "aria-label": "prompt: editing it runs the model again"
    });
    this.progress = /** @type {HTMLProgressElement} */
    h("progress", {
      class: "llmscope-progress",
      max: 1,
      value: 0,
      "aria-label": "layers of the model run so far"
    });
    this.cancelButton = /** @type {HTMLButtonElement} */
    h("button", {
      type: "button",
      class: "llmscope-cancel",
      "aria-label": "cancel: stop the model at the next layer"
    }, "cancel");
    this.runBox = h("div", { class: "llmscope-run" }, this.progress, this.cancelButton);
    this.runBox.hidden = true;
    this.grid = h("div", {
      class: "llmscope-grid",
      role: "grid",
      "aria-label": "attention heads, a row per layer and a column per head: click one, or move with the arrow keys"
    });
    this.attributionLegend = h("div", { class: "llmscope-legend llmscope-attribution" });
    this.attributionLegend.hidden = true;
    this.title = h("div", { class: "llmscope-title" });
    this.canvas = /** @type {HTMLCanvasElement} */
    h("canvas", { class: "llmscope-heatmap", role: "img" });
    this.readout = h("div", { class: "llmscope-readout", "aria-live": "polite" });
    this.tokens = new TokenStrip({
      label: "tokens of the prompt: hover one, or move with the arrow keys, to see where it attends",
      onActive: () => this.shadeTokens()
    });
    const swatch = (map, text) => h(
      "span",
      { class: "llmscope-swatch" },
      h("i", { style: `background: ${css(map, 0.75, 0.8)}` }),
      text
    );
    el.replaceChildren(h(
      "div",
      { class: "llmscope llmscope-attention" },
      this.errors.el,
      h(
        "div",
        { class: "llmscope-columns" },
        h(
          "div",
          { class: "llmscope-column llmscope-overview" },
          this.promptBox,
          this.status,
          this.runBox,
          this.grid,
          this.attributionLegend
        ),
        h(
          "div",
          { class: "llmscope-column llmscope-focus" },
          this.title,
          h("div", { class: "llmscope-axes" }, "rows: query token · columns: key token it attends to"),
          this.canvas,
          this.readout,
          h(
            "div",
            { class: "llmscope-legend" },
            swatch(MAPS.blues, "where the token attends"),
            swatch(MAPS.oranges, "what attends to it")
          ),
          this.tokens.el
        )
      )
    ));
    this.submitSoon = this.soon((text) => this.submit(text), PROMPT_DEBOUNCE_MS);
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
    this.on("change:focus", () => {
      this.markFocus();
      this.scrollToFocus();
      this.fetchHeadSoon();
    });
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
    if (!run || run.run === void 0) return;
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
        this.status.textContent += ` · no layer for ${Math.round(ms / 1e3)} s: the kernel may be busy or stuck`;
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
  clearShown(run) {
    for (const slot of ["run", "overview", "head", "cancel"]) this.errors.clear(slot);
    this.shown = { ...this.shown, run, complete: false, painted: 0, tokens: [], scores: [], scoreNames: [] };
    this.pattern = null;
    this.tokens.setTokens([], 0);
    this.readout.textContent = "";
    this.title.textContent = "";
    this.canvas.getContext("2d")?.clearRect(0, 0, this.canvas.width, this.canvas.height);
    delete this.canvas.dataset.focus;
    for (const cell of this.cells.flat()) {
      cell.firstChild.getContext("2d")?.clearRect(0, 0, 1e4, 1e4);
      cell.classList.add("is-pending");
      cell.lastChild.textContent = "…";
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
      this.paintThumbs(
        /** @type {Uint8Array} */
        thumbs.data,
        thumbs.shape[2],
        data.done
      );
      if (data.complete && !this.shown.complete) {
        this.shown = { ...this.shown, complete: true, scores: scores.data, scoreNames: data.score_names };
        this.labelCells();
        this.pattern = null;
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
    const header = h(
      "div",
      { class: "llmscope-grid-row", role: "row" },
      h("span", { role: "columnheader" }),
      ...Array.from({ length: nHeads }, (_, head) => h("span", { class: "llmscope-axis", role: "columnheader" }, `head ${head}`))
    );
    this.cells = Array.from({ length: nLayers }, (_, layer) => Array.from({ length: nHeads }, (_2, head) => h(
      "div",
      {
        class: "llmscope-cell",
        role: "gridcell",
        tabindex: -1,
        "data-layer": layer,
        "data-head": head,
        "aria-selected": "false"
      },
      h("canvas", { "aria-hidden": "true" }),
      h("span", { class: "llmscope-cell-bar", hidden: true }, h("i")),
      h("span", { class: "llmscope-cell-label" })
    )));
    this.grid.replaceChildren(header, ...this.cells.map((row, layer) => h(
      "div",
      { class: "llmscope-grid-row", role: "row" },
      h("span", { class: "llmscope-axis", role: "rowheader" }, `attn.${layer}`),
      ...row
    )));
  }
  /** Draw the thumbnails of the layers done since the last paint. @param {Uint8Array} thumbs [layers, heads, t, t] */
  paintThumbs(thumbs, t, done) {
    const { nHeads } = this.shown;
    for (let layer = this.shown.painted; layer < done; layer++) {
      this.cells[layer].forEach((cell, head) => {
        const at = layer * nHeads + head;
        drawHeatmap(
          /** @type {HTMLCanvasElement} */
          cell.firstChild,
          thumbs.subarray(at * t * t, (at + 1) * t * t),
          t,
          t,
          TABLE
        );
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
        cell.lastChild.textContent = `P ${formatScore(p)} I ${formatScore(i)}`;
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
    return {
      marks: attribution.values ? attributionMarks(attribution.values) : null,
      signed: Boolean(attribution.signed),
      what: `${attribution.label}${attribution.behaviour ? ` for ${attribution.behaviour}` : ""}`
    };
  }
  /** Mark each head by the attribution `colour_by` set (a bar under its thumbnail), or take the marks off. */
  markAttribution() {
    const { marks, signed, what } = this.attribution();
    this.cells.forEach((row, layer) => row.forEach((cell, head) => {
      const bar = (
        /** @type {HTMLElement} */
        cell.children[1]
      );
      const mark = marks?.[layer]?.[head] ?? null;
      bar.hidden = marks === null;
      bar.classList.toggle("is-unscreened", marks !== null && mark === null);
      const fill = (
        /** @type {HTMLElement} */
        bar.firstChild
      );
      fill.style.width = mark ? `${Math.round(Math.abs(mark.share) * 100)}%` : "0";
      fill.style.background = mark ? mark.colour : "";
    }));
    this.attributionLegend.hidden = marks === null;
    this.attributionLegend.textContent = marks === null ? "" : `bars: ${what}, each head's share of the largest (${signed ? "orange: a lesion of the head harms the behaviour; blue: it helps; " : ""}dashed: not screened)`;
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
      if (data === null || data.pattern === null) return;
      const pattern = await decodeArray(data.pattern);
      const [l, hd] = this.model.get("focus");
      if (data.run !== this.shown.run || data.layer !== l || data.head !== hd) return;
      const n = pattern.shape[0];
      this.pattern = { data: (
        /** @type {Uint8Array} */
        pattern.data
      ), n, layer, head };
      const side = devicePixels(this.canvas.clientWidth || HEATMAP_PX);
      const drawn = drawHeatmap(this.canvas, this.pattern.data, n, n, TABLE, { causal: true, maxWidth: side, maxHeight: side });
      const at = (layer * this.shown.nHeads + head) * this.shown.scoreNames.length;
      const scores = this.shown.scoreNames.map((name, k) => `${name.replace("_", "-")} ${formatScore(this.shown.scores[at + k])}`);
      this.title.textContent = `attn.${layer} head ${head}${scores.length ? ": " : ""}${scores.join(", ")}`;
      const pooled = drawn.width < n ? `, each pixel the largest of ${(n / drawn.width).toFixed(1)} x ${(n / drawn.width).toFixed(1)} cells` : "";
      this.canvas.setAttribute("aria-label", `attention pattern of layer ${layer} head ${head}: ${n} query rows by ${n} key columns${pooled}`);
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
    this.readout.textContent = `query ${cell.row} ${JSON.stringify(tokens[cell.row])} → key ${cell.col} ${JSON.stringify(tokens[cell.col])}: ${(data[cell.row * n + cell.col] / 255).toFixed(3)}`;
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
    shades.attends.forEach((v, j) => {
      if (v > shades.attends[top]) top = j;
    });
    this.readout.textContent = `${JSON.stringify(this.shown.tokens[i])} (position ${i}) attends most to ${JSON.stringify(this.shown.tokens[top])} (position ${top}): ${shades.attends[top].toFixed(3)}`;
  }
  /** Send an edited prompt: the kernel starts it at once, and `_progress` follows its layers. */
  submit(text) {
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
};
var attention_map_default = mount(AttentionView);
export {
  attributionMarks,
  attention_map_default as default,
  formatScore,
  formatShare,
  moveFocus,
  shadeColours,
  stallMs,
  tokenShades
};
