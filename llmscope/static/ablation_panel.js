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
  el.append(.../** @type {Array<Node | string>} */
  children.filter((c) => c !== null && c !== void 0 && c !== false && c !== ""));
  return el;
}
function indexIn(target, root, selector) {
  const hit = target instanceof Element ? target.closest(selector) : null;
  return hit && root.contains(hit) ? Number(hit.getAttribute("data-index")) : null;
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

// src/ablation_panel.js
var MOVE_DEBOUNCE_MS = 60;
var MOVE_TIMEOUT_MS = 3e5;
function describeGain(f) {
  const what = f === 0 ? "lesioned" : f === 1 ? "intact" : f > 1 ? "stimulated" : "weakened";
  return `×${f.toFixed(2)} ${what}`;
}
function metricText({ name, base, now }) {
  const f = (x) => x === null || !Number.isFinite(x) ? "–" : x.toFixed(3);
  const delta = base !== null && now !== null && Number.isFinite(base) && Number.isFinite(now) ? now - base : NaN;
  const sign = delta > 0 ? "+" : "";
  const label = name === "logit_diff" ? "logit difference (good − bad)" : "loss (nats)";
  return `${label}: ${f(now)}  baseline ${f(base)}  change ${Number.isFinite(delta) ? sign + delta.toFixed(3) : "–"}`;
}
function distributionRows(ids, texts, base, now) {
  return Array.from(ids, (id, i) => ({ id, text: texts[i], base: base[i], now: now[i] })).sort((a, b) => Math.max(b.base, b.now) - Math.max(a.base, a.now));
}
function percent(p) {
  const v = Number.isFinite(p) ? Math.min(Math.max(p, 0), 1) * 100 : 0;
  return { width: v, text: `${v < 10 ? v.toFixed(1) : v.toFixed(0)}%` };
}
function toGain(value, range) {
  const v = Number(value);
  if (!Number.isFinite(v)) return NaN;
  const perUnit = Math.round(1 / range.step);
  return Math.min(Math.max(Math.round(v * perUnit) / perUnit, range.min), range.max);
}
var AblationView = class extends View {
  /** @param {any} model @param {HTMLElement} el @param {import("./wire.js").Invoke} invoke */
  constructor(model, el, invoke) {
    super(model, el, invoke);
    this.views = this.channel("_view");
    this.moves = this.channel("_move", MOVE_TIMEOUT_MS);
    this.range = model.get("_meta").gain;
    this.sliders = [];
    this.readouts = [];
    this.labels = [];
    const modeName = `llmscope-mode-${Math.random().toString(36).slice(2)}`;
    this.sliderBox = h("div", { class: "llmscope-sliders", role: "group", "aria-label": "gain of each unit" });
    this.modes = {};
    const modeBox = h(
      "div",
      { class: "llmscope-modes", role: "radiogroup", "aria-label": "what a gain below 1 moves towards" },
      ...[["zero", "zero ablation"], ["mean", "mean ablation"]].map(([value, text]) => {
        const input = (
          /** @type {HTMLInputElement} */
          h("input", { type: "radio", name: modeName, value })
        );
        this.modes[value] = input;
        input.addEventListener("change", () => this.moveSoon());
        return h("label", {}, input, ` ${text}`);
      })
    );
    const resetButton = h("button", { type: "button", class: "llmscope-reset" }, "reset (all ×1)");
    resetButton.addEventListener("click", () => this.reset());
    this.metric = h("div", { class: "llmscope-metric", "aria-live": "polite" });
    this.dist = h("div", { class: "llmscope-dist", role: "table", "aria-label": "next-token probabilities" });
    this.context = new TokenStrip({ label: "the context the next token is predicted from", onActive: () => {
    } });
    el.replaceChildren(h(
      "div",
      { class: "llmscope llmscope-ablation" },
      this.errors.el,
      h(
        "div",
        { class: "llmscope-columns" },
        h("div", { class: "llmscope-column llmscope-controls" }, this.sliderBox, modeBox, resetButton, this.status),
        h(
          "div",
          { class: "llmscope-column llmscope-results" },
          this.metric,
          h(
            "div",
            { class: "llmscope-legend" },
            h("span", { class: "llmscope-key is-base" }, "baseline"),
            h("span", { class: "llmscope-key is-now" }, "intervened")
          ),
          this.dist,
          h("div", { class: "llmscope-axes" }, "context (the next token follows its last token):"),
          this.context.el
        )
      )
    ));
    this.moveSoon = this.soon(() => this.move(), MOVE_DEBOUNCE_MS);
    this.on("change:version", () => this.refresh());
    this.refresh();
  }
  /** @param {string[]} labels */
  buildSliders(labels) {
    const { min, max, step } = this.range;
    this.labels = labels;
    this.sliders = [];
    this.readouts = [];
    this.sliderBox.replaceChildren(...labels.map((label, i) => {
      const input = (
        /** @type {HTMLInputElement} */
        h("input", {
          type: "range",
          min,
          max,
          step,
          value: 1,
          "data-index": i,
          "aria-label": `gain of ${label}: ${min} lesions, 1 intact, up to ${max} stimulates`
        })
      );
      const out = h("output", { class: "llmscope-gain" });
      input.addEventListener("input", () => {
        out.textContent = describeGain(toGain(input.value, this.range));
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
      const data = await this.views.request();
      if (data !== null) await this.show(data, true);
    });
  }
  /** Send every gain and the mode; the kernel runs the model once and answers. */
  move() {
    const factors = this.sliders.map((s) => toGain(s.value, this.range));
    const mode = this.modes.mean.checked ? "mean" : "zero";
    return this.guard("move", async () => {
      this.status.textContent = "running the model…";
      const started = performance.now();
      const data = await this.moves.request({ factors, mode });
      if (data === null) return;
      await this.show(data, false);
      this.status.textContent += ` · ${Math.round(performance.now() - started)} ms`;
    });
  }
  reset() {
    this.sliders.forEach((s) => {
      s.value = "1";
    });
    this.moveSoon.cancel();
    return this.move();
  }
  /** Redraw from a reply of `_view` or `_move`; `syncControls` moves the sliders to the kernel's gains. */
  async show(data, syncControls) {
    const [ids, base, now] = await Promise.all([data.ids, data.base, data.now].map(decodeArray));
    if (data.labels.join("\0") !== this.labels.join("\0")) this.buildSliders(data.labels);
    data.factors.forEach((f, i) => {
      if (syncControls) this.sliders[i].value = String(f);
      this.readouts[i].textContent = describeGain(f);
      this.sliders[i].setAttribute("aria-valuetext", this.readouts[i].textContent);
    });
    if (syncControls) this.modes[data.mode].checked = true;
    this.metric.textContent = metricText(data.metric);
    const rows = distributionRows(ids.data, data.texts, base.data, now.data);
    this.dist.replaceChildren(...rows.map((row) => {
      const [b, n] = [percent(row.base), percent(row.now)];
      return h(
        "div",
        { class: "llmscope-dist-row", role: "row", title: `token id ${row.id}` },
        h("span", { class: "llmscope-dist-token", role: "cell" }, displayText(row.text)),
        h(
          "span",
          { class: "llmscope-bars", role: "cell" },
          h("i", { class: "llmscope-bar is-base", style: `width: ${b.width}%` }),
          h("i", { class: "llmscope-bar is-now", style: `width: ${n.width}%` })
        ),
        h("span", { class: "llmscope-dist-p", role: "cell" }, `${b.text} → ${n.text}`)
      );
    }));
    this.dist.dataset.factors = data.factors.join(",");
    this.dist.dataset.top = rows.length ? String(rows[0].id) : "";
    this.context.setTokens(data.context, data.n_bos);
    const off = data.factors.filter((f) => f !== 1).length;
    this.status.textContent = `${data.model}, ${data.mode} mode: ${off ? `${off} of ${data.factors.length} off ×1` : "all intact"}`;
  }
};
var ablation_panel_default = mount(AblationView);
export {
  ablation_panel_default as default,
  describeGain,
  distributionRows,
  metricText,
  percent,
  toGain
};
