/* Built by esbuild from widgets/src (cd widgets && npm run build); do not edit. */

// src/dom.js
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (/^on/i.test(key)) throw new TypeError(`h() does not set event-handler attributes (${key})`);
    if (value === false || value === null || value === void 0) continue;
    if (key === "class") el.className = String(value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  el.append(...children.filter((c) => c !== null && c !== void 0 && c !== false && c !== ""));
  return el;
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
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
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

// src/heatmap.js
function fillPixels(pixels, codes, table, width, { causal = false } = {}) {
  if (pixels.length !== codes.length) throw new RangeError(`${codes.length} codes for ${pixels.length} pixels`);
  for (let i = 0; i < codes.length; i++) pixels[i] = table[codes[i]];
  if (causal) {
    for (let row = 0; row * width < pixels.length; row++) pixels.fill(0, row * width + row + 1, (row + 1) * width);
  }
  return pixels;
}
function cellAt(event, box, width, height) {
  const col = Math.floor(event.offsetX / box.clientWidth * width);
  const row = Math.floor(event.offsetY / box.clientHeight * height);
  return row >= 0 && row < height && col >= 0 && col < width ? { row, col } : null;
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

// src/tokens.js
function displayText(text) {
  const shown = String(text).replace(/\r?\n/g, "↵").replace(/\t/g, "⇥");
  return shown === "" ? "∅" : shown;
}

// src/raster.js
var WINDOW_DEBOUNCE_MS = 60;
var SAVE_DEBOUNCE_MS = 150;
var CLICK_DEBOUNCE_MS = 120;
var TIMEOUT_MS = 6e4;
var MIN_TOKENS = 16;
var SPIKE = pack(...MAPS.blues[4]);
var SHADE = [247, 251, 255];
function spikeTable(rung) {
  const table = new Uint32Array(256);
  for (let c = 0; c < 256; c++) {
    if (c > rung) table[c] = SPIKE;
    else {
      const f = rung > 0 ? 1 - 0.18 * (c / rung) : 1;
      table[c] = pack(...SHADE.map((v) => Math.round(v * f)));
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
  for (let k = 0; k < 4; k++) fillPixels(pixels, codes, table, 256);
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
function stepRung(rung, key, max) {
  const to = {
    ArrowLeft: rung - 1,
    ArrowDown: rung - 1,
    ArrowRight: rung + 1,
    ArrowUp: rung + 1,
    PageDown: rung - 10,
    PageUp: rung + 10,
    Home: 0,
    End: max
  }[key];
  return to === void 0 ? null : Math.min(Math.max(to, 0), max);
}
function formatThreshold(method, value) {
  return method === "zscore" ? `z > ${value.toFixed(2)}` : `quantile > ${value.toFixed(3)}`;
}
var RasterView = class {
  /** @param {any} model @param {HTMLElement} el @param {import("./wire.js").Invoke} invoke */
  constructor(model, el, invoke) {
    this.model = model;
    this.started = performance.now();
    this.channels = {
      window: new Channel(invoke, "_window", { timeoutMs: TIMEOUT_MS }),
      unit: new Channel(invoke, "_unit", { timeoutMs: TIMEOUT_MS }),
      token: new Channel(invoke, "_token", { timeoutMs: TIMEOUT_MS })
    };
    this.errors = new ErrorBox();
    this.meta = null;
    this.win = null;
    this.frame = null;
    this.cursor = null;
    this.build(el);
    this.fetchWindowSoon = debounce(() => this.fetchWindow(), WINDOW_DEBOUNCE_MS);
    this.saveRungSoon = debounce(
      () => {
        this.model.set("rung", this.rung());
        this.model.save_changes();
      },
      SAVE_DEBOUNCE_MS
    );
    this.fetchUnitSoon = debounce((unit) => this.fetchUnit(unit), CLICK_DEBOUNCE_MS);
    this.fetchTokenSoon = debounce((column) => this.fetchToken(column), CLICK_DEBOUNCE_MS);
    this.unwatch = watchKernel(model, (error) => showLost(error, el, this.errors, Object.values(this.channels)));
    this.listeners = {
      "change:version": () => this.refresh(),
      "change:rung": () => {
        this.slider.value = String(this.model.get("rung"));
        this.paint();
      },
      "change:selection": () => this.markSelection(),
      "change:view": () => {
        if (!this.showing(this.model.get("view"))) this.fetchWindowSoon();
      }
    };
    for (const [event, fn] of Object.entries(this.listeners)) model.on(event, fn);
    this.refresh(model.get("_first_window"));
  }
  /** @param {HTMLElement} el */
  build(el) {
    this.slider = /** @type {HTMLInputElement} */
    h("input", {
      type: "range",
      min: 0,
      max: 254,
      step: 1,
      value: this.model.get("rung"),
      class: "llmscope-threshold",
      "aria-label": "spike threshold: a unit spikes where its response is above it"
    });
    this.thresholdText = h("span", { class: "llmscope-threshold-value" });
    const button = (text, action, label) => {
      const b = h("button", { type: "button", class: "llmscope-button", "aria-label": label, "data-action": action }, text);
      b.addEventListener("click", () => this.move(action));
      return b;
    };
    this.status = h("div", { class: "llmscope-status", role: "status" });
    this.canvas = /** @type {HTMLCanvasElement} */
    h("canvas", {
      class: "llmscope-raster-canvas",
      tabindex: 0,
      role: "img",
      "aria-label": "spike raster, a row per unit and a column per token: click a cell to select its unit and token; arrow keys move the selection, Page Up/Down scroll units, + and - zoom tokens"
    });
    this.marks = h("div", { class: "llmscope-raster-marks", "aria-hidden": "true" });
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
        { class: "llmscope-columns" },
        h(
          "div",
          { class: "llmscope-column" },
          h("div", { class: "llmscope-raster-frame" }, this.canvas, this.marks),
          this.readout
        ),
        h("div", { class: "llmscope-column llmscope-raster-side" }, this.unitPanel, this.tokenPanel)
      )
    ));
    this.slider.addEventListener("input", () => {
      this.paint();
      this.saveRungSoon();
    });
    this.slider.addEventListener("keydown", (e) => {
      const to = stepRung(this.rung(), e.key, Number(this.slider.max));
      if (to === null) return;
      e.preventDefault();
      e.stopPropagation();
      this.slider.value = String(to);
      this.paint();
      this.saveRungSoon();
    });
    this.canvas.addEventListener("click", (e) => this.click(e));
    this.canvas.addEventListener("mousemove", (e) => this.hover(e));
    this.canvas.addEventListener("keydown", (e) => this.key(e));
    this.canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      const zoom = e.ctrlKey || e.metaKey;
      const tokens = e.shiftKey || Math.abs(e.deltaX) > Math.abs(e.deltaY);
      const back = (tokens && !e.shiftKey ? e.deltaX : e.deltaY) < 0;
      this.move(zoom ? back ? "in" : "out" : tokens ? back ? "left" : "right" : back ? "up" : "down");
    }, { passive: false });
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
    const read = await guard(this.errors, "meta", async () => {
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
      this.slider.max = String(ladder.data.length - 1);
    });
    if (!read) return;
    if (shows(first, this.model.get("view"), this.model.get("version"))) {
      await guard(this.errors, "window", () => this.show(first, performance.now()));
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
    return guard(this.errors, "window", async () => {
      const [u0, u1, t0, t1] = this.model.get("view");
      this.status.textContent = "loading…";
      const asked = performance.now();
      const reply = this.channels.window.request({ u0, u1, t0, t1 });
      warmUp();
      const data = await reply;
      if (data === null) return;
      const arrived = performance.now();
      this.canvas.dataset.roundTripMs = (arrived - asked).toFixed(2);
      await this.show(data, arrived);
    });
  }
  /**
   * Decode a window and paint it; `since` is when it was at hand (ms, performance.now()).
   * @param {any} data a `_window` answer @param {number} since
   */
  async show(data, since) {
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
    this.paint();
    this.canvas.dataset.windowMs = (performance.now() - since).toFixed(2);
  }
  /**
   * Colour the window's cells through `table`, one canvas pixel a cell. The ImageData is kept
   * while the window's size stays: a slider step then writes 4 bytes a cell and nothing else
   * (setting a canvas's size, even to the same value, reallocates and clears it).
   * @param {NonNullable<RasterView["win"]>} win @param {Uint32Array} table
   */
  draw(win, table) {
    let frame = this.frame;
    if (!frame || frame.image.width !== win.nt || frame.image.height !== win.nu) {
      this.canvas.width = win.nt;
      this.canvas.height = win.nu;
      const context = (
        /** @type {CanvasRenderingContext2D} */
        this.canvas.getContext("2d")
      );
      const image = context.createImageData(win.nt, win.nu);
      frame = this.frame = { image, context, pixels: new Uint32Array(image.data.buffer) };
    }
    fillPixels(frame.pixels, win.codes, table, win.nt);
    frame.context.putImageData(frame.image, 0, 0);
  }
  /** The label of a window row's unit: "mlp.0:12". */
  label(row) {
    return `${this.meta?.site}:${this.win?.units[row]}`;
  }
  /** Draw the window at the slider's rung (no kernel involved). */
  paint() {
    const { win, meta } = this;
    if (!win || !meta) return;
    const rung = this.rung();
    const start = performance.now();
    this.draw(win, spikeTable(rung));
    const spikes = spikesAbove(win.counts, rung);
    this.canvas.dataset.paintMs = (performance.now() - start).toFixed(2);
    this.canvas.dataset.rung = String(rung);
    this.canvas.dataset.spikes = String(spikes);
    this.canvas.dataset.view = `${win.u0},${win.u0 + win.nu},${win.t0},${win.t0 + win.nt}`;
    this.canvas.dataset.firstPaintMs ??= (performance.now() - this.started).toFixed(1);
    const shown = formatThreshold(meta.method, meta.ladder[rung]);
    this.thresholdText.textContent = shown;
    this.slider.setAttribute("aria-valuetext", shown);
    this.status.textContent = `${meta.site}: units ${win.u0}–${win.u0 + win.nu - 1} of ${meta.nUnits}, tokens ${win.t0}–${win.t0 + win.nt - 1} of ${meta.nTokens}; ${spikes} spikes in view`;
    this.markSelection();
  }
  /** Mark the selected units (rows) and the cursor's token (column) over the canvas. */
  markSelection() {
    const { win } = this;
    if (!win) return;
    const selected = new Set(this.model.get("selection"));
    const marks = [];
    win.units.forEach((unit, row) => {
      if (!selected.has(unit)) return;
      marks.push(h("div", { class: "llmscope-raster-row", style: `top: ${100 * row / win.nu}%; height: max(2px, ${100 / win.nu}%)`, "data-row": row }));
    });
    if (this.cursor) {
      marks.push(h("div", { class: "llmscope-raster-col", style: `left: ${100 * this.cursor.col / win.nt}%; width: max(2px, ${100 / win.nt}%)` }));
    }
    this.marks.replaceChildren(...marks);
    this.canvas.dataset.selection = [...selected].join(",");
  }
  /** A line about a cell: unit, token, spike or not. */
  describeCell({ row, col }) {
    const { win } = (
      /** @type {any} */
      this
    );
    const code = win.codes[row * win.nt + col];
    const pref = win.preferred ? ` (prefers ${win.preferred[row]})` : "";
    return `${this.label(row)}${pref} at token ${win.t0 + col} ${JSON.stringify(win.tokens[col])}: ` + (code > this.rung() ? "spike" : "no spike");
  }
  /** @param {MouseEvent} event */
  hover(event) {
    if (!this.win) return;
    const cell = cellAt(event, this.canvas, this.win.nt, this.win.nu);
    if (cell) this.readout.textContent = this.describeCell(cell);
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
    const action = pages[
      /** @type {keyof typeof pages} */
      event.key
    ];
    const step = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] }[event.key];
    if (!action && !step) return;
    event.preventDefault();
    event.stopPropagation();
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
    return guard(this.errors, "unit", async () => {
      const data = await this.channels.unit.request({ unit });
      if (data === null) return;
      const parts = [h("div", { class: "llmscope-title" }, data.label)];
      if (data.curve) {
        const [mean, sem] = await Promise.all([decodeArray(data.curve.mean), decodeArray(data.curve.sem)]);
        parts.push(
          h("div", { class: "llmscope-axes" }, `tuning curve: mean response by ${data.curve.label} (± s.e.m.)`),
          this.curve(
            data.curve.categories,
            /** @type {Float32Array} */
            mean.data,
            /** @type {Float32Array} */
            sem.data
          )
        );
      }
      const activation = (
        /** @type {Float32Array} */
        (await decodeArray(data.examples.activation)).data
      );
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
   * Horizontal bars of a tuning curve, drawn with elements (each category's name as text).
   * @param {string[]} categories @param {Float32Array} mean @param {Float32Array} sem
   */
  curve(categories, mean, sem) {
    const lo = Math.min(0, ...mean);
    const hi = Math.max(...Array.from(mean, (m, i) => m + (sem[i] || 0)), lo + 1e-9);
    return h("div", { class: "llmscope-raster-curve", role: "list" }, ...categories.map((name, i) => h(
      "div",
      { class: "llmscope-raster-bar", role: "listitem", "aria-label": `${name}: ${mean[i].toFixed(3)}` },
      h("span", { class: "llmscope-bar-name" }, name),
      h("span", { class: "llmscope-bar-track" }, h("i", { style: `width: ${100 * (mean[i] - lo) / (hi - lo)}%` })),
      h("span", { class: "llmscope-value" }, mean[i].toFixed(3))
    )));
  }
  /** Ask for a token's context; show it. */
  fetchToken(column) {
    return guard(this.errors, "token", async () => {
      const data = await this.channels.token.request({ column });
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
    this.unwatch();
    for (const [event, fn] of Object.entries(this.listeners)) this.model.off(event, fn);
    for (const soon of [this.fetchWindowSoon, this.saveRungSoon, this.fetchUnitSoon, this.fetchTokenSoon]) soon.cancel();
    Object.values(this.channels).forEach((channel) => channel.cancel());
  }
};
var raster_default = {
  /** @param {{model: any, el: HTMLElement, experimental: {invoke: import("./wire.js").Invoke}}} props */
  render({ model, el, experimental }) {
    const view = new RasterView(model, el, experimental.invoke);
    return () => view.destroy();
  }
};
export {
  raster_default as default,
  formatThreshold,
  moveView,
  shows,
  spikeTable,
  spikesAbove,
  stepRung,
  warmUp
};
