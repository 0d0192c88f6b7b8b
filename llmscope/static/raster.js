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

// src/raster.js
var WINDOW_DEBOUNCE_MS = 60;
var SAVE_DEBOUNCE_MS = 150;
var CLICK_DEBOUNCE_MS = 120;
var MIN_TOKENS = 16;
var UNIT_TICK_PX = 14;
var TOKEN_TICK_PX = 64;
var TOKEN_TEXT_PX = 30;
var SPIKE = pack(...MAPS.blues[4]);
var SHADE = [247, 251, 255];
function spikeTable(rung) {
  const table = new Uint32Array(256);
  for (let c = 0; c < 256; c++) {
    if (c > rung) table[c] = SPIKE;
    else {
      const f = rung > 0 ? 1 - 0.18 * (c / rung) : 1;
      const [r, g, b] = SHADE.map((v) => Math.round(v * f));
      table[c] = pack(r, g, b);
    }
  }
  return table;
}
function spikesAbove(counts, rung) {
  let total = 0;
  for (let c = rung + 1; c < counts.length; c++) total += counts[c];
  return total;
}
var warmed = false;
function warmUp() {
  if (warmed) return;
  warmed = true;
  const codes = new Uint8Array(1 << 16);
  const pixels = new Uint32Array(codes.length);
  const table = spikeTable(0);
  for (let k = 0; k < 4; k++) {
    fillPixels(pixels, codes, table, 256);
    poolMax(codes, 256, 256, 100, 100);
  }
}
function shows(window, [u0, u1, t0, t1], version) {
  const shape = window?.codes?.shape;
  return Array.isArray(shape) && window.version === version && window.u0 === u0 && window.t0 === t0 && shape[0] === u1 - u0 && shape[1] === t1 - t0;
}
function moveView([u0, u1, t0, t1], action, nUnits, nTokens) {
  const nu = u1 - u0;
  let nt = t1 - t0;
  let [a, b] = [u0, t0];
  if (action === "up") a -= nu;
  else if (action === "down") a += nu;
  else if (action === "left") b -= Math.max(1, nt >> 1);
  else if (action === "right") b += Math.max(1, nt >> 1);
  else if (action === "home") b = 0;
  else if (action === "end") b = nTokens - nt;
  else if (action === "in" || action === "out") {
    const centre = t0 + nt / 2;
    nt = action === "in" ? Math.max(Math.min(MIN_TOKENS, nTokens), nt >> 1) : Math.min(nTokens, nt * 2);
    b = Math.round(centre - nt / 2);
  }
  a = Math.min(Math.max(a, 0), nUnits - nu);
  b = Math.min(Math.max(b, 0), nTokens - nt);
  return [a, a + nu, b, b + nt];
}
function formatThreshold(method, value) {
  return method === "zscore" ? `z > ${value.toFixed(2)}` : `quantile > ${value.toFixed(3)}`;
}
function tickEvery(n, px, minPx) {
  const least = minPx * n / Math.max(px, 1);
  for (let power = 1; ; power *= 10) {
    for (const step of [1, 2, 5]) if (step * power >= least) return step * power;
  }
}
function bands(categories) {
  const out = [];
  categories.forEach((name, row) => {
    const last = out[out.length - 1];
    if (last && last.name === name) last.end = row + 1;
    else out.push({ name, start: row, end: row + 1 });
  });
  return out;
}
function barGeometry(mean, sem) {
  const m = Array.from(mean);
  const s = Array.from(sem, (v) => Number.isFinite(v) ? v : 0);
  const lo = Math.min(0, ...m.map((v, i) => v - s[i]));
  const hi = Math.max(0, ...m.map((v, i) => v + s[i]));
  const span = hi - lo || 1;
  const x = (v) => 100 * (v - lo) / span;
  return {
    zero: x(0),
    bars: m.map((v, i) => ({
      left: x(Math.min(0, v)),
      width: Math.abs(x(v) - x(0)),
      error: Number.isFinite(sem[i]) ? { left: x(v - s[i]), width: x(v + s[i]) - x(v - s[i]) } : null
    }))
  };
}
var RasterView = class extends View {
  /** @param {any} model @param {HTMLElement} el @param {import("./wire.js").Invoke} invoke */
  constructor(model, el, invoke) {
    super(model, el, invoke);
    this.started = performance.now();
    this.windows = this.channel("_window");
    this.units = this.channel("_unit");
    this.tokenContexts = this.channel("_token");
    this.meta = null;
    this.win = null;
    this.cursor = null;
    const meta = model.get("_meta");
    this.slider = /** @type {HTMLInputElement} */
    h("input", {
      type: "range",
      min: 0,
      max: meta.rungs - 1,
      step: 1,
      value: model.get("rung"),
      class: "llmscope-threshold",
      "aria-label": "spike threshold: a unit spikes where its response is above it"
    });
    this.thresholdText = h("span", { class: "llmscope-threshold-value" });
    const button = (text, action, label) => {
      const b = h("button", { type: "button", class: "llmscope-button", "aria-label": label, "data-action": action }, text);
      b.addEventListener("click", () => this.move(action));
      return b;
    };
    this.canvas = /** @type {HTMLCanvasElement} */
    h("canvas", {
      class: "llmscope-raster-canvas",
      tabindex: 0,
      role: "img",
      "aria-label": "spike raster, a row per unit and a column per token: click a cell to select its unit and token; arrow keys move the selection, Page Up/Down scroll units, + and - zoom tokens"
    });
    this.marks = h("div", { class: "llmscope-raster-marks", "aria-hidden": "true" });
    this.stage = h("div", { class: "llmscope-raster-stage" }, this.canvas, this.marks);
    this.gutter = h("div", { class: "llmscope-raster-gutter", "aria-hidden": "true" });
    this.tokenAxis = h("div", { class: "llmscope-raster-taxis", "aria-hidden": "true" });
    this.readout = h("div", { class: "llmscope-readout", "aria-live": "polite" });
    this.unitPanel = h(
      "div",
      { class: "llmscope-raster-unit", "aria-live": "polite" },
      h("div", { class: "llmscope-hint" }, "click a unit to see its tuning curve and top examples")
    );
    this.tokenPanel = h("div", { class: "llmscope-raster-token", "aria-live": "polite" });
    el.replaceChildren(h(
      "div",
      { class: "llmscope llmscope-raster" },
      this.errors.el,
      h(
        "div",
        { class: "llmscope-raster-controls" },
        h("label", {}, "threshold ", this.slider),
        this.thresholdText,
        button("◀", "left", "earlier tokens"),
        button("▶", "right", "later tokens"),
        button("▲", "up", "previous units"),
        button("▼", "down", "next units"),
        button("+", "in", "zoom in: fewer tokens"),
        button("−", "out", "zoom out: more tokens")
      ),
      this.status,
      h(
        "div",
        { class: "llmscope-raster-body" },
        h(
          "div",
          { class: "llmscope-raster-plot" },
          h(
            "div",
            { class: "llmscope-raster-frame" },
            this.gutter,
            this.stage,
            h("div", { class: "llmscope-raster-corner" }, "unit ↓ token →"),
            this.tokenAxis
          ),
          this.readout
        ),
        h("div", { class: "llmscope-raster-side" }, this.unitPanel, this.tokenPanel)
      )
    ));
    this.fetchWindowSoon = this.soon(() => this.fetchWindow(), WINDOW_DEBOUNCE_MS);
    this.saveRungSoon = this.soon(
      () => {
        this.model.set("rung", this.rung());
        this.model.save_changes();
      },
      SAVE_DEBOUNCE_MS
    );
    this.fetchUnitSoon = this.soon((unit) => this.fetchUnit(unit), CLICK_DEBOUNCE_MS);
    this.fetchTokenSoon = this.soon((column) => this.fetchToken(column), CLICK_DEBOUNCE_MS);
    this.slider.addEventListener("input", () => {
      this.paint();
      this.saveRungSoon();
    });
    this.canvas.addEventListener("click", (e) => this.click(e));
    this.canvas.addEventListener("mousemove", (e) => this.hover(e));
    this.canvas.addEventListener("mouseleave", () => this.gutter.querySelector(".is-hover")?.remove());
    this.canvas.addEventListener("keydown", (e) => this.key(e));
    this.canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      const zoom = e.ctrlKey || e.metaKey;
      const tokens = e.shiftKey || Math.abs(e.deltaX) > Math.abs(e.deltaY);
      const back = (tokens && !e.shiftKey ? e.deltaX : e.deltaY) < 0;
      this.move(zoom ? back ? "in" : "out" : tokens ? back ? "left" : "right" : back ? "up" : "down");
    }, { passive: false });
    this.resized = new ResizeObserver(() => {
      if (this.win) this.show();
    });
    this.resized.observe(this.stage);
    this.on("change:version", () => this.refresh());
    this.on("change:rung", () => {
      this.slider.value = String(this.model.get("rung"));
      this.paint();
    });
    this.on("change:selection", () => {
      this.markSelection();
      const selection = this.model.get("selection");
      if (selection.length) this.fetchUnitSoon(selection[selection.length - 1]);
    });
    this.on("change:view", () => {
      if (!this.showing(this.model.get("view"))) this.fetchWindowSoon();
    });
    this.refresh(model.get("_first_window"));
  }
  rung() {
    return Number(this.slider.value);
  }
  /** Whether the window on show is `view`. */
  showing([u0, u1, t0, t1]) {
    const w = this.win;
    return w !== null && w.u0 === u0 && w.u0 + w.nu === u1 && w.t0 === t0 && w.t0 + w.nt === t1;
  }
  /**
   * Read the sizes and ladder from the state, then show the view: `first` (the state's first
   * window) when it is the view's window, else the kernel's answer.
   * @param {any} [first]
   */
  async refresh(first) {
    this.win = null;
    const read = await this.guard("meta", async () => {
      const data = this.model.get("_meta");
      const ladder = await decodeArray(data.ladder);
      this.meta = {
        site: data.site,
        method: data.method,
        nUnits: data.n_units,
        nTokens: data.n_tokens,
        ladder: (
          /** @type {Float32Array} */
          ladder.data
        )
      };
      this.slider.max = String(data.rungs - 1);
    });
    if (!read) return;
    if (shows(first, this.model.get("view"), this.model.get("version"))) {
      await this.guard("window", () => this.receive(first, performance.now()));
    } else {
      await this.fetchWindow();
    }
  }
  /** @param {string} action */
  move(action) {
    if (!this.meta) return;
    const to = moveView(this.model.get("view"), action, this.meta.nUnits, this.meta.nTokens);
    this.model.set("view", to);
    this.model.save_changes();
    this.fetchWindowSoon();
  }
  /** Ask for the codes of the view and draw them. */
  fetchWindow() {
    return this.guard("window", async () => {
      const [u0, u1, t0, t1] = this.model.get("view");
      this.status.textContent = "loading…";
      const asked = performance.now();
      const reply = this.windows.request({ u0, u1, t0, t1 });
      warmUp();
      const data = await reply;
      if (data === null) return;
      const arrived = performance.now();
      this.canvas.dataset.roundTripMs = (arrived - asked).toFixed(2);
      await this.receive(data, arrived);
    });
  }
  /**
   * Decode a window and show it; `since` is when it was at hand (ms, performance.now()).
   * @param {any} data a `_window` answer @param {number} since
   */
  async receive(data, since) {
    const [codes, counts, units] = await Promise.all([data.codes, data.counts, data.units].map(decodeArray));
    const [nu, nt] = codes.shape;
    this.win = {
      u0: data.u0,
      t0: data.t0,
      nu,
      nt,
      codes: (
        /** @type {Uint8Array} */
        codes.data
      ),
      counts: (
        /** @type {Int32Array} */
        counts.data
      ),
      units: (
        /** @type {Int32Array} */
        units.data
      ),
      preferred: data.preferred,
      tokens: data.tokens
    };
    this.cursor = null;
    this.show();
    this.canvas.dataset.windowMs = (performance.now() - since).toFixed(2);
  }
  /** Lay out the axes of the window on show and paint it. */
  show() {
    this.labelUnits();
    this.labelTokens();
    this.paint();
  }
  /** Draw the window at the slider's rung (no kernel involved), pooled to the canvas's pixels. */
  paint() {
    const { win, meta } = this;
    if (!win || !meta) return;
    const rung = this.rung();
    const start = performance.now();
    drawHeatmap(this.canvas, win.codes, win.nt, win.nu, spikeTable(rung), {
      maxWidth: devicePixels(this.stage.clientWidth || win.nt),
      maxHeight: devicePixels(this.stage.clientHeight || win.nu)
    });
    const spikes = spikesAbove(win.counts, rung);
    this.canvas.dataset.paintMs = (performance.now() - start).toFixed(2);
    this.canvas.dataset.rung = String(rung);
    this.canvas.dataset.spikes = String(spikes);
    this.canvas.dataset.view = `${win.u0},${win.u0 + win.nu},${win.t0},${win.t0 + win.nt}`;
    this.canvas.dataset.firstPaintMs ??= (performance.now() - this.started).toFixed(1);
    const shown = formatThreshold(meta.method, meta.ladder[rung]);
    this.thresholdText.textContent = shown;
    this.slider.setAttribute("aria-valuetext", shown);
    const pooled = this.canvas.width < win.nt || this.canvas.height < win.nu ? ` (each pixel ${(win.nu / this.canvas.height).toFixed(1)} units x ${(win.nt / this.canvas.width).toFixed(1)} tokens: dark if any spikes)` : "";
    this.status.textContent = `${meta.site}: units ${win.u0}–${win.u0 + win.nu - 1} of ${meta.nUnits}, tokens ${win.t0}–${win.t0 + win.nt - 1} of ${meta.nTokens}; ${spikes} spikes in view${pooled}`;
    this.markSelection();
  }
  /** The gutter: a band per run of one `sort_by` category, and unit ids where they fit. */
  labelUnits() {
    const win = (
      /** @type {NonNullable<RasterView["win"]>} */
      this.win
    );
    const height = this.stage.clientHeight || win.nu;
    const pct = (row) => `${100 * row / win.nu}%`;
    const marks = [];
    if (win.preferred) {
      bands(win.preferred).forEach(({ name, start, end }, i) => {
        const tall = (end - start) * height / win.nu >= 12;
        marks.push(h("div", {
          class: `llmscope-band is-${i % 2 ? "odd" : "even"}`,
          title: `prefers ${name}`,
          style: `top: ${pct(start)}; height: ${pct(end - start)}`
        }, tall ? name : ""));
      });
    }
    const every = tickEvery(win.nu, height, UNIT_TICK_PX);
    for (let row = 0; row < win.nu; row += every) {
      marks.push(h("div", { class: "llmscope-tick", style: `top: ${pct(row + 0.5)}` }, String(win.units[row])));
    }
    this.gutter.replaceChildren(...marks);
    this.gutter.classList.toggle("has-bands", win.preferred !== null);
  }
  /** The token axis: positions where they fit, and each token's text once the columns are wide. */
  labelTokens() {
    const win = (
      /** @type {NonNullable<RasterView["win"]>} */
      this.win
    );
    const width = this.stage.clientWidth || win.nt;
    const perToken = width / win.nt;
    const ticks = [];
    if (perToken >= TOKEN_TEXT_PX) {
      win.tokens.forEach((text, col) => ticks.push(h("div", {
        class: "llmscope-tick is-text",
        title: `token ${win.t0 + col}: ${JSON.stringify(text)}`,
        style: `left: ${100 * col / win.nt}%; width: ${100 / win.nt}%`
      }, displayText(text))));
    } else {
      const every = tickEvery(win.nt, width, TOKEN_TICK_PX);
      for (let t = Math.ceil(win.t0 / every) * every; t < win.t0 + win.nt; t += every) {
        ticks.push(h("div", { class: "llmscope-tick", style: `left: ${100 * (t - win.t0 + 0.5) / win.nt}%` }, String(t)));
      }
    }
    this.tokenAxis.replaceChildren(...ticks);
  }
  /** Mark the selected units (rows, and their ids in the gutter) and the cursor's token (column). */
  markSelection() {
    const { win } = this;
    if (!win) return;
    const selected = new Set(this.model.get("selection"));
    const marks = [];
    this.gutter.querySelectorAll(".is-selected").forEach((mark) => mark.remove());
    win.units.forEach((unit, row) => {
      if (!selected.has(unit)) return;
      const middle = `${100 * (row + 0.5) / win.nu}%`;
      marks.push(h("div", { class: "llmscope-raster-row", style: `top: ${middle}; height: ${100 / win.nu}%`, "data-row": row }));
      this.gutter.append(h(
        "div",
        { class: "llmscope-tick is-selected", style: `top: ${100 * (row + 0.5) / win.nu}%` },
        `▶ ${unit}`
      ));
    });
    if (this.cursor) {
      marks.push(h("div", { class: "llmscope-raster-col", style: `left: ${100 * this.cursor.col / win.nt}%; width: ${100 / win.nt}%` }));
    }
    this.marks.replaceChildren(...marks);
    this.canvas.dataset.selection = [...selected].join(",");
  }
  /** The label of a window row's unit: "mlp.0:12". */
  label(row) {
    return `${this.meta?.site}:${this.win?.units[row]}`;
  }
  /** A line about a cell: unit, token, spike or not. */
  describeCell({ row, col }) {
    const win = (
      /** @type {NonNullable<RasterView["win"]>} */
      this.win
    );
    const code = win.codes[row * win.nt + col];
    const pref = win.preferred ? ` (prefers ${win.preferred[row]})` : "";
    return `${this.label(row)}${pref} at token ${win.t0 + col} ${JSON.stringify(win.tokens[col])}: ` + (code > this.rung() ? "spike" : "no spike");
  }
  /** @param {MouseEvent} event */
  hover(event) {
    const { win } = this;
    if (!win) return;
    const cell = cellAt(event, this.canvas, win.nt, win.nu);
    if (!cell) return;
    this.readout.textContent = this.describeCell(cell);
    this.gutter.querySelector(".is-hover")?.remove();
    this.gutter.append(h(
      "div",
      { class: "llmscope-tick is-hover", style: `top: ${100 * (cell.row + 0.5) / win.nu}%` },
      String(win.units[cell.row])
    ));
  }
  /** @param {MouseEvent} event */
  click(event) {
    if (!this.win) return;
    const cell = cellAt(event, this.canvas, this.win.nt, this.win.nu);
    if (cell) this.pick(cell, event.shiftKey);
  }
  /** Select the unit of `cell`'s row (adding it with `add`) and show its token; ask the kernel. */
  pick(cell, add = false) {
    const win = (
      /** @type {NonNullable<RasterView["win"]>} */
      this.win
    );
    const unit = win.units[cell.row];
    const before = this.model.get("selection");
    this.model.set("selection", add ? [...before.filter((u) => u !== unit), unit] : [unit]);
    this.model.save_changes();
    this.cursor = cell;
    this.readout.textContent = this.describeCell(cell);
    this.markSelection();
    this.fetchUnitSoon(unit);
    this.fetchTokenSoon(win.t0 + cell.col);
  }
  /** @param {KeyboardEvent} event */
  key(event) {
    if (!this.win) return;
    const pages = { PageUp: "up", PageDown: "down", "+": "in", "=": "in", "-": "out", Home: "home", End: "end" };
    const steps = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    const action = pages[event.key];
    const step = steps[event.key];
    if (!action && !step) return;
    event.preventDefault();
    if (action) {
      this.move(action);
      return;
    }
    const { nu, nt } = this.win;
    const from = this.cursor ?? { row: 0, col: 0 };
    const to = this.cursor ? { row: from.row + step[0], col: from.col + step[1] } : from;
    this.pick({ row: Math.min(Math.max(to.row, 0), nu - 1), col: Math.min(Math.max(to.col, 0), nt - 1) });
  }
  /** Ask for a unit's tuning curve and top examples; show them. */
  fetchUnit(unit) {
    return this.guard("unit", async () => {
      const data = await this.units.request({ unit });
      if (data === null) return;
      const parts = [h("div", { class: "llmscope-title" }, data.label)];
      if (data.curve) {
        const [mean, sem] = await Promise.all([decodeArray(data.curve.mean), decodeArray(data.curve.sem)]);
        parts.push(
          h("div", { class: "llmscope-axes" }, `tuning curve: mean response by ${data.curve.label} (± s.e.m.)`),
          this.curve(data.curve.categories, mean.data, sem.data)
        );
      }
      const activation = (await decodeArray(data.examples.activation)).data;
      const gap = data.joiner;
      parts.push(h("div", { class: "llmscope-axes" }, "top examples"), h(
        "ol",
        { class: "llmscope-raster-examples" },
        ...data.examples.text.map((text, i) => h(
          "li",
          {},
          h("span", { class: "llmscope-value" }, activation[i].toFixed(3)),
          " ",
          h(
            "span",
            { class: "llmscope-context" },
            data.examples.left[i] + gap,
            h("mark", {}, displayText(text)),
            gap + data.examples.right[i]
          )
        ))
      ));
      this.unitPanel.replaceChildren(...parts);
      this.unitPanel.dataset.unit = String(unit);
    });
  }
  /**
   * Horizontal bars of a tuning curve from zero, with ± s.e.m. error bars, drawn with
   * elements (each category's name as text).
   * @param {string[]} categories @param {ArrayLike<number>} mean @param {ArrayLike<number>} sem
   */
  curve(categories, mean, sem) {
    const { zero, bars } = barGeometry(mean, sem);
    return h("div", { class: "llmscope-raster-curve", role: "list" }, ...categories.map((name, i) => {
      const { left, width, error } = bars[i];
      return h(
        "div",
        {
          class: "llmscope-raster-bar",
          role: "listitem",
          "aria-label": `${name}: ${mean[i].toFixed(3)} ± ${Number(sem[i]).toFixed(3)}`
        },
        h("span", { class: "llmscope-bar-name" }, name),
        h(
          "span",
          { class: "llmscope-bar-track" },
          h("i", { class: mean[i] < 0 ? "is-negative" : "", style: `left: ${left}%; width: ${width}%` }),
          error && h("b", { style: `left: ${error.left}%; width: ${error.width}%` }),
          h("u", { style: `left: ${zero}%` })
        ),
        h("span", { class: "llmscope-value" }, mean[i].toFixed(3))
      );
    }));
  }
  /** Ask for a token's context; show it. */
  fetchToken(column) {
    return this.guard("token", async () => {
      const data = await this.tokenContexts.request({ column });
      if (data === null) return;
      const gap = data.joiner;
      const labels = Object.entries(data.labels).map(([k, v]) => `${k}=${v}`).join(" · ");
      this.tokenPanel.replaceChildren(
        h("div", { class: "llmscope-title" }, `token ${column}`),
        h("div", { class: "llmscope-context" }, data.left + gap, h("mark", {}, displayText(data.text)), gap + data.right),
        h("div", { class: "llmscope-axes" }, labels)
      );
      this.tokenPanel.dataset.column = String(column);
    });
  }
  destroy() {
    this.resized.disconnect();
    super.destroy();
  }
};
var raster_default = mount(RasterView);
export {
  bands,
  barGeometry,
  raster_default as default,
  formatThreshold,
  moveView,
  shows,
  spikeTable,
  spikesAbove,
  tickEvery,
  warmUp
};
