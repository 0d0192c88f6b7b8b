// @ts-check
// The kernel <-> page wire protocol that every llmscope widget speaks.
//
// The page asks with anywidget's `invoke(command, {seq, ...fields})`. The kernel answers
//   {seq, ok: true, data, buffer_paths}               plus binary buffers beside the JSON, or
//   {seq, ok: false, error: {type, message, traceback}}.
// In `data` every array was lifted out into a buffer: `buffer_paths[i]` is where buffers[i]
// goes back. An array is `{buffer, dtype, shape}`, optionally with `layout: "tril"` (only the
// lower triangle of the last two axes, row by row) and `compression: "deflate"` (zlib).

/** @typedef {Uint8Array | Int32Array | Float32Array} NumericArray */
/** @typedef {{buffer: DataView | ArrayBuffer | ArrayBufferView, dtype: string, shape: number[],
 *             layout?: "tril", compression?: "deflate"}} ArrayPayload */
/** @typedef {{data: NumericArray, shape: number[]}} Decoded */
/** @typedef {(name: string, msg: object, options?: {buffers?: ArrayBuffer[], signal?: AbortSignal})
 *             => Promise<[any, Array<DataView | ArrayBuffer>]>} Invoke */

/** A reply that breaks the protocol (a bug on one side, never the user's doing). */
export class WireError extends Error {
  name = "WireError";
}

/** An exception the kernel raised while answering; `type` is its Python class name. */
export class KernelError extends Error {
  name = "KernelError";

  /** @param {{type?: string, message?: string, traceback?: string}} error */
  constructor(error) {
    super(String(error?.message ?? "the kernel reported an error without a message"));
    this.type = String(error?.type ?? "Error");
    this.traceback = error?.traceback ? String(error.traceback) : "";
  }
}

/** No answer in time: the kernel is busy, dead or restarted. */
export class KernelTimeout extends Error {
  name = "KernelTimeout";

  /** @param {string} command @param {number} ms */
  constructor(command, ms) {
    super(`the kernel did not answer "${command}" within ${Math.round(ms / 1000)} s: it may still be ` +
          "busy, or it was restarted (run the widget's cell again)");
  }
}

/** The kernel behind the widget restarted or died: nothing will answer until its cell runs again. */
export class KernelLost extends Error {
  name = "KernelLost";

  /** @param {string} status the kernel's status ("restarting", "starting", "dead"...) or "disconnected" */
  constructor(status) {
    // A restart this page did not make ("starting" is all it sees) leaves JupyterLab sending
    // widget messages to subshells of the old kernel; only a reload clears them.
    const [what, todo] = {
      starting: ["the kernel was restarted outside this page", "Reload the page, then run its cell again."],
      dead: ["the kernel died", "Restart it and run its cell again."],
      disconnected: ["the connection to the kernel closed", "Run its cell again."],
    }[status] ?? ["the kernel restarted", "Run its cell again."];
    super(`${what}: this widget is no longer connected to Python. ${todo}`);
    this.status = status;
  }
}

/**
 * Bytes of any buffer-like value, without copying.
 * @param {DataView | ArrayBuffer | ArrayBufferView} buffer
 * @returns {Uint8Array}
 */
export function asBytes(buffer) {
  if (buffer instanceof ArrayBuffer) return new Uint8Array(buffer);
  if (ArrayBuffer.isView(buffer)) return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  throw new WireError(`expected a binary buffer, got ${typeof buffer}`);
}

/**
 * Put the reply's buffers back where the kernel lifted them out (mutates and returns `data`).
 * @param {any} data @param {Array<Array<string | number>>} paths
 * @param {Array<DataView | ArrayBuffer | ArrayBufferView>} buffers
 */
export function putBuffers(data, paths, buffers) {
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

/**
 * IEEE half floats to float32.
 * @param {Uint16Array} halves
 * @returns {Float32Array}
 */
export function float16ToFloat32(halves) {
  const out = new Float32Array(halves.length);
  for (let i = 0; i < halves.length; i++) {
    const h = halves[i];
    const sign = h & 0x8000 ? -1 : 1;
    const exponent = (h >> 10) & 0x1f;
    const fraction = h & 0x3ff;
    if (exponent === 0) out[i] = sign * fraction * 2 ** -24;  // zero and subnormals
    else if (exponent === 31) out[i] = fraction ? NaN : sign * Infinity;
    else out[i] = sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
  }
  return out;
}

/** Bytes per element, and a view of aligned little-endian bytes as values, per dtype. */
const DTYPES = {
  uint8: { size: 1, view: (/** @type {Uint8Array} */ b) => b },
  int32: { size: 4, view: (/** @type {Uint8Array} */ b) => new Int32Array(b.buffer, b.byteOffset, b.byteLength / 4) },
  float32: { size: 4, view: (/** @type {Uint8Array} */ b) => new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4) },
  float16: {
    size: 2,
    view: (/** @type {Uint8Array} */ b) => float16ToFloat32(new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2)),
  },
};

/**
 * Unpack the row-by-row lower triangles of `[..., n, n]` into full matrices (zeros above).
 * @template {NumericArray} T
 * @param {T} packed @param {number} n @param {number} count how many matrices
 * @returns {T}
 */
export function unpackTril(packed, n, count) {
  const per = (n * (n + 1)) / 2;
  if (packed.length !== per * count) {
    throw new WireError(`a lower triangle of ${count} x ${n} x ${n} holds ${per * count} values, got ${packed.length}`);
  }
  const full = /** @type {T} */ (new /** @type {any} */ (packed.constructor)(count * n * n));
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

/**
 * Inflate zlib ("deflate") bytes with the browser's own DecompressionStream.
 * @param {Uint8Array} bytes
 * @returns {Promise<Uint8Array>}
 */
export async function inflate(bytes) {
  // the kernel's buffers arrive as ArrayBuffers (never shared memory), which a Blob takes
  const stream = new Blob([/** @type {Uint8Array<ArrayBuffer>} */ (bytes)]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/**
 * An array from the wire as a typed array and its shape (row-major, C order).
 * @param {ArrayPayload} payload
 * @returns {Promise<Decoded>}
 */
export async function decodeArray(payload) {
  const { dtype, shape, layout, compression } = payload;
  const kind = Object.hasOwn(DTYPES, dtype) ? DTYPES[/** @type {keyof typeof DTYPES} */ (dtype)] : null;
  if (!kind) throw new WireError(`unsupported dtype ${JSON.stringify(dtype)}; expected one of ${Object.keys(DTYPES)}`);
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new WireError(`bad shape ${JSON.stringify(shape)}`);
  }
  if (compression !== undefined && compression !== "deflate") throw new WireError(`unknown compression ${compression}`);
  if (layout !== undefined && layout !== "tril") throw new WireError(`unknown layout ${layout}`);
  let bytes = asBytes(payload.buffer);
  if (compression === "deflate") bytes = await inflate(bytes);
  if (bytes.byteLength % kind.size) throw new WireError(`${bytes.byteLength} bytes is not a whole number of ${dtype}`);
  // a typed array needs an aligned offset; slice() copies into a fresh, aligned buffer
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

const SUPERSEDED = Symbol("superseded");
// Jupyter's websocket drops browser-to-kernel messages over 10 MB (a silent loss, then a timeout)
export const MAX_REQUEST_BYTES = 8 * 2 ** 20;

/**
 * One command of a widget, asked for again and again (the focused head, the prompt...): each
 * request carries a sequence number, a newer request aborts the one in flight, an answer to
 * anything but the newest request is dropped, and every request has its own timeout
 * (anywidget's `invoke` would otherwise give up after 3 s).
 */
export class Channel {
  /** @param {Invoke} invoke @param {string} command @param {{timeoutMs?: number}} [options] */
  constructor(invoke, command, { timeoutMs = 60_000 } = {}) {
    this.invoke = invoke;
    this.command = command;
    this.timeoutMs = timeoutMs;
    this.seq = 0;
    /** @type {AbortController | null} */
    this.inFlight = null;
    /** @type {Error | null} why every request now fails (see close()) */
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
      throw new WireError(`a request to "${this.command}" of ${(size / 2 ** 20).toFixed(1)} MB is more than the ` +
                          `${MAX_REQUEST_BYTES / 2 ** 20} MB the kernel's websocket takes`);
    }
    const controller = new AbortController();
    this.inFlight = controller;
    const timer = AbortSignal.timeout(this.timeoutMs);
    let reply, buffers;
    try {
      [reply, buffers] = await this.invoke(this.command, { ...fields, seq },
                                           { signal: AbortSignal.any([controller.signal, timer]) });
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
  close(/** @type {Error} */ error) {
    this.closed = error;
    this.inFlight?.abort(error);
  }
}

/**
 * The data of a reply, or the kernel's error thrown as a KernelError.
 * @param {any} reply @param {Array<DataView | ArrayBuffer>} buffers @param {number} seq
 */
export function openReply(reply, buffers, seq) {
  if (reply === null || typeof reply !== "object") throw new WireError(`the kernel's reply is not an object: ${reply}`);
  if (reply.ok === false) throw new KernelError(reply.error);
  if (reply.ok !== true) throw new WireError("the kernel's reply has no ok field");
  if (reply.seq !== seq) throw new WireError(`the answer to request ${seq} came back as ${reply.seq}`);
  return putBuffers(reply.data, reply.buffer_paths ?? [], buffers);
}
