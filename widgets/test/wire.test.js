import assert from "node:assert/strict";
import { test } from "node:test";
import { deflateSync } from "node:zlib";

import {
  Channel, KernelError, KernelLost, KernelTimeout, MAX_REQUEST_BYTES, WireError, asBytes, decodeArray, float16ToFloat32, openReply, putBuffers,
  unpackTril,
} from "../src/wire.js";

test("asBytes views DataView, ArrayBuffer and typed arrays without copying", () => {
  const buffer = new Uint8Array([1, 2, 3, 4]).buffer;
  const view = new DataView(buffer, 1, 2);
  assert.deepEqual([...asBytes(view)], [2, 3]);
  assert.equal(asBytes(view).buffer, buffer);
  assert.deepEqual([...asBytes(buffer)], [1, 2, 3, 4]);
  assert.throws(() => asBytes("abc"), WireError);
});

test("putBuffers puts each buffer back at its path", () => {
  const data = { a: { buffer: null, dtype: "uint8" }, list: [{ buffer: null }] };
  const [b0, b1] = [new DataView(new ArrayBuffer(1)), new DataView(new ArrayBuffer(2))];
  putBuffers(data, [["a", "buffer"], ["list", 0, "buffer"]], [b0, b1]);
  assert.equal(data.a.buffer, b0);
  assert.equal(data.list[0].buffer, b1);
  assert.throws(() => putBuffers({}, [["x", "y"]], [b0]), /does not exist/);
  assert.throws(() => putBuffers({}, [["x"]], []), /1 buffer paths but carries 0/);
});

test("float16ToFloat32 decodes normals, subnormals, zeros, infinities and NaN", () => {
  // 1, -2, 0.5, 65504 (max), 2^-24 (smallest subnormal), -0, +inf, -inf, NaN, 0.1 (rounded)
  const halves = new Uint16Array([0x3c00, 0xc000, 0x3800, 0x7bff, 0x0001, 0x8000, 0x7c00, 0xfc00, 0x7e00, 0x2e66]);
  const out = float16ToFloat32(halves);
  assert.deepEqual([...out.slice(0, 5)], [1, -2, 0.5, 65504, 2 ** -24]);
  assert.ok(Object.is(out[5], -0));
  assert.equal(out[6], Infinity);
  assert.equal(out[7], -Infinity);
  assert.ok(Number.isNaN(out[8]));
  assert.ok(Math.abs(out[9] - 0.1) < 1e-4);
});

test("unpackTril fills the lower triangles row by row and leaves zeros above", () => {
  // two 3x3 matrices: rows [1], [2 3], [4 5 6] and [7], [8 9], [10 11 12]
  const full = unpackTril(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]), 3, 2);
  assert.deepEqual([...full], [1, 0, 0, 2, 3, 0, 4, 5, 6, 7, 0, 0, 8, 9, 0, 10, 11, 12]);
  assert.ok(full instanceof Uint8Array);
  assert.throws(() => unpackTril(new Uint8Array(5), 3, 1), /holds 6 values, got 5/);
});

test("decodeArray reads uint8, int32, float32 and float16 in their shapes", async () => {
  const u8 = await decodeArray({ buffer: new Uint8Array([0, 128, 255]), dtype: "uint8", shape: [3] });
  assert.deepEqual([...u8.data], [0, 128, 255]);
  const i32 = await decodeArray({ buffer: new Int32Array([-1, 7]).buffer, dtype: "int32", shape: [2, 1] });
  assert.deepEqual([...i32.data], [-1, 7]);
  assert.deepEqual(i32.shape, [2, 1]);
  const f32 = await decodeArray({ buffer: new Float32Array([0.25]), dtype: "float32", shape: [1] });
  assert.deepEqual([...f32.data], [0.25]);
  const f16 = await decodeArray({ buffer: new Uint16Array([0x3c00, 0x3800]), dtype: "float16", shape: [2] });
  assert.ok(f16.data instanceof Float32Array);
  assert.deepEqual([...f16.data], [1, 0.5]);
});

test("decodeArray copies a buffer whose offset does not suit its dtype", async () => {
  const bytes = new Uint8Array([9, 0, 0x3c, 0, 0x38]);  // float16 [1, 0.5] starting at byte 1
  const out = await decodeArray({ buffer: new DataView(bytes.buffer, 1, 4), dtype: "float16", shape: [2] });
  assert.deepEqual([...out.data], [1, 0.5]);
});

test("decodeArray inflates zlib and unpacks a lower triangle, as the kernel sends a pattern", async () => {
  const packed = new Uint8Array([255, 100, 155, 10, 20, 225]);
  const payload = { buffer: new Uint8Array(deflateSync(packed)), dtype: "uint8", shape: [3, 3], layout: "tril",
                    compression: "deflate" };
  const out = await decodeArray(payload);
  assert.deepEqual([...out.data], [255, 0, 0, 100, 155, 0, 10, 20, 225]);
  const none = await decodeArray({ buffer: new Uint8Array(0), dtype: "uint8", shape: [0, 0], layout: "tril" });
  assert.equal(none.data.length, 0);
});

test("decodeArray refuses what does not fit", async () => {
  const b = new Uint8Array(4);
  await assert.rejects(decodeArray({ buffer: b, dtype: "float64", shape: [4] }), /unsupported dtype "float64"/);
  await assert.rejects(decodeArray({ buffer: b, dtype: "constructor", shape: [4] }), /unsupported dtype/);
  await assert.rejects(decodeArray({ buffer: b, dtype: "uint8", shape: [5] }), /holds 5 values, got 4/);
  await assert.rejects(decodeArray({ buffer: b, dtype: "uint8", shape: [-4] }), /bad shape/);
  await assert.rejects(decodeArray({ buffer: new Uint8Array(3), dtype: "int32", shape: [1] }), /whole number of int32/);
  await assert.rejects(decodeArray({ buffer: b, dtype: "uint8", shape: [4], compression: "gzip" }), /compression/);
  await assert.rejects(decodeArray({ buffer: b, dtype: "uint8", shape: [2, 2], layout: "tril" }), /holds 3 values/);
  await assert.rejects(decodeArray({ buffer: b, dtype: "uint8", shape: [4], layout: "tril" }), /tril layout needs/);
});

/** A stand-in for anywidget's invoke: each call waits until the test answers it; an abort rejects it. */
function fakeKernel() {
  const calls = [];
  const invoke = (name, msg, { signal }) => new Promise((resolve, reject) => {
    const call = { name, msg, answer: (reply, buffers = []) => resolve([reply, buffers]) };
    calls.push(call);
    signal.addEventListener("abort", () => reject(signal.reason));
  });
  return { calls, invoke };
}

const ok = (seq, data = {}, paths = []) => ({ seq, ok: true, data, buffer_paths: paths });

test("a channel numbers its requests and returns the data with its buffers in place", async () => {
  const kernel = fakeKernel();
  const channel = new Channel(kernel.invoke, "_head");
  const pending = channel.request({ layer: 1 });
  assert.deepEqual(kernel.calls[0].msg, { layer: 1, seq: 1 });
  assert.equal(kernel.calls[0].name, "_head");
  const buffer = new DataView(new ArrayBuffer(3));
  kernel.calls[0].answer(ok(1, { pattern: { buffer: null } }, [["pattern", "buffer"]]), [buffer]);
  assert.equal((await pending).pattern.buffer, buffer);
});

test("a newer request makes the older one stale: it resolves to null, whatever the kernel says", async () => {
  const kernel = fakeKernel();
  const channel = new Channel(kernel.invoke, "_head");
  const first = channel.request({ head: 0 });
  const second = channel.request({ head: 1 });
  assert.equal(await first, null);  // aborted when the second was sent
  kernel.calls[0].answer(ok(1, { head: 0 }));  // the kernel answers anyway: nobody listens
  kernel.calls[1].answer(ok(2, { head: 1 }));
  assert.deepEqual(await second, { head: 1 });
});

test("an answer that lands after a newer request was made is dropped", async () => {
  const answered = [];
  const invoke = (name, msg) => Promise.resolve([ok(msg.seq, { seq: msg.seq }), []]);
  const channel = new Channel(invoke, "_run");
  const first = channel.request();
  const second = channel.request();  // made before the first answer is read
  answered.push(await first, await second);
  assert.deepEqual(answered, [null, { seq: 2 }]);
});

test("a kernel exception comes back as a KernelError with its type, message and traceback", async () => {
  const kernel = fakeKernel();
  const pending = new Channel(kernel.invoke, "_run").request({ prompt: "" });
  kernel.calls[0].answer({ seq: 1, ok: false, error: { type: "PromptError", message: "empty prompt", traceback: "tb" } });
  const error = await pending.catch((e) => e);
  assert.ok(error instanceof KernelError);
  assert.equal(error.type, "PromptError");
  assert.equal(error.message, "empty prompt");
  assert.equal(error.traceback, "tb");
});

test("no answer within the channel's timeout is a KernelTimeout naming the command", async () => {
  const kernel = fakeKernel();
  const alive = setTimeout(() => {}, 1000);  // node's AbortSignal.timeout does not hold the event loop open
  const error = await new Channel(kernel.invoke, "_overview", { timeoutMs: 20 }).request().catch((e) => e);
  clearTimeout(alive);
  assert.ok(error instanceof KernelTimeout);
  assert.match(error.message, /did not answer "_overview" within 0 s/);
});

test("cancel() aborts the request in flight", async () => {
  const kernel = fakeKernel();
  const channel = new Channel(kernel.invoke, "_head");
  const pending = channel.request();
  channel.cancel();
  assert.equal(await pending, null);
});

test("close() fails the request in flight and every later one, without sending it", async () => {
  const kernel = fakeKernel();
  const channel = new Channel(kernel.invoke, "_head");
  const pending = channel.request();
  const lost = new KernelLost("dead");
  channel.close(lost);
  assert.equal(await pending.catch((e) => e), lost);
  assert.equal(await channel.request().catch((e) => e), lost);
  assert.equal(kernel.calls.length, 1);
});

test("a request larger than the websocket takes is refused before it is sent", async () => {
  const kernel = fakeKernel();
  const channel = new Channel(kernel.invoke, "_run");
  const error = await channel.request({ prompt: "x".repeat(MAX_REQUEST_BYTES + 1) }).catch((e) => e);
  assert.ok(error instanceof WireError);
  assert.match(error.message, /request to "_run" of 8\.0 MB is more than the 8 MB/);
  assert.equal(kernel.calls.length, 0);
});

test("openReply checks the protocol", () => {
  assert.throws(() => openReply(null, [], 1), WireError);
  assert.throws(() => openReply({ seq: 1 }, [], 1), /no ok field/);
  assert.throws(() => openReply(ok(2), [], 1), /answer to request 1 came back as 2/);
  assert.throws(() => openReply({ seq: null, ok: false, error: { type: "LLMScopeError", message: "bad" } }, [], 1),
                KernelError);
});
