import assert from "node:assert/strict";
import { test } from "node:test";

import { LOST_STATUSES, showLost, watchKernel } from "../src/kernel.js";
import { Channel, KernelLost } from "../src/wire.js";

/** A lumino-like signal: connect, disconnect, emit. */
function fakeSignal() {
  const slots = new Set();
  return { slots, connect: (fn) => slots.add(fn), disconnect: (fn) => slots.delete(fn),
           emit: (value) => [...slots].forEach((fn) => fn(null, value)) };
}

/** An anywidget model with `on`/`off`, `trigger`, and (optionally) a kernel on its widget manager. */
function fakeModel(kernel) {
  const handlers = new Map();
  return {
    widget_manager: kernel ? { kernel } : {},
    on: (name, fn) => handlers.set(name, [...(handlers.get(name) ?? []), fn]),
    off: (name, fn) => handlers.set(name, (handlers.get(name) ?? []).filter((f) => f !== fn)),
    trigger: (name) => (handlers.get(name) ?? []).forEach((fn) => fn()),
    count: (name) => (handlers.get(name) ?? []).length,
  };
}

test("a restart, a crash, a new kernel or a dead one is reported once, as a KernelLost; busy, idle and a dropped websocket are not", () => {
  for (const status of LOST_STATUSES) {
    const statusChanged = fakeSignal();
    const model = fakeModel({ statusChanged });
    const seen = [];
    watchKernel(model, (error) => seen.push(error));
    ["busy", "idle", "unknown", "idle"].forEach((s) => statusChanged.emit(s));
    assert.equal(seen.length, 0);
    statusChanged.emit(status);
    statusChanged.emit(status);
    model.trigger("comm_live_update");
    assert.equal(seen.length, 1, status);
    assert.ok(seen[0] instanceof KernelLost);
    assert.equal(seen[0].status, status);
    assert.equal(statusChanged.slots.size, 0, "still listening after the kernel was lost");
  }
  assert.match(new KernelLost("autorestarting").message, /^the kernel restarted: .* Run its cell again\.$/);
  assert.match(new KernelLost("dead").message, /^the kernel died: /);
  assert.match(new KernelLost("starting").message, /^the kernel was restarted outside this page: .* Reload the page, then run its cell again\.$/);
});

test("without a kernel on the widget manager, a dropped connection is the sign", () => {
  const model = fakeModel(null);
  const seen = [];
  watchKernel(model, (error) => seen.push(error.status));
  model.trigger("comm_live_update");
  assert.deepEqual(seen, ["disconnected"]);
  assert.equal(model.count("comm_live_update"), 0);
});

test("stop() stops watching", () => {
  const statusChanged = fakeSignal();
  const model = fakeModel({ statusChanged });
  const seen = [];
  watchKernel(model, (error) => seen.push(error))();
  statusChanged.emit("restarting");
  model.trigger("comm_live_update");
  assert.deepEqual(seen, []);
  assert.equal(model.count("comm_live_update"), 0);
});

test("showLost closes every channel, shows the error and disables the controls", async () => {
  const never = (_name, _msg, { signal }) => new Promise((_, reject) => signal.addEventListener("abort", () => reject(signal.reason)));
  const channels = [new Channel(never, "_view"), new Channel(never, "_move")];
  const pending = channels[1].request({ factors: [0] });
  const controls = [{ disabled: false }, { disabled: false }];
  const classes = new Set();
  const root = { classList: { add: (c) => classes.add(c) }, querySelectorAll: () => controls };
  const shown = [];
  const error = new KernelLost("restarting");
  showLost(error, root, { show: (slot, e) => shown.push([slot, e]) }, channels);
  assert.equal(await pending.catch((e) => e), error, "the request in flight did not fail at once");
  assert.equal(await channels[0].request().catch((e) => e), error);
  assert.deepEqual(shown, [["kernel", error]]);
  assert.ok(classes.has("is-lost"));
  assert.ok(controls.every((c) => c.disabled));
});
