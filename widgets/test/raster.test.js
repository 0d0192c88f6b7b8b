import assert from "node:assert/strict";
import { test } from "node:test";

import { MAPS, pack } from "../src/colormap.js";
import { fillPixels } from "../src/heatmap.js";
import { formatThreshold, moveView, shows, spikeTable, spikesAbove, stepRung } from "../src/raster.js";

const SPIKE = pack(...MAPS.blues[4]);

/** How many cells hold each code, as the kernel sends it with a window (np.bincount). */
function counted(/** @type {Uint8Array} */ codes) {
  const counts = new Int32Array(256);
  codes.forEach((c) => counts[c]++);
  return counts;
}

test("a window is thresholded in the page: code > rung spikes, and nothing else does", () => {
  const codes = new Uint8Array([0, 127, 128, 255, 5, 200]);  // 2 units x 3 tokens
  for (const [rung, expected] of [[127, [0, 0, 1, 1, 0, 1]], [0, [0, 1, 1, 1, 1, 1]], [254, [0, 0, 0, 1, 0, 0]],
                                  [200, [0, 0, 0, 1, 0, 0]], [199, [0, 0, 0, 1, 0, 1]]]) {
    const pixels = fillPixels(new Uint32Array(6), codes, spikeTable(rung), 3);
    assert.deepEqual(Array.from(pixels, (p) => Number(p === SPIKE)), expected, `rung ${rung}`);
    assert.equal(spikesAbove(counted(codes), rung), expected.reduce((a, b) => a + b, 0));
  }
});

test("below threshold a cell greys as it nears the threshold, never as dark as a spike", () => {
  const table = spikeTable(100);
  const red = (/** @type {number} */ p) => p & 0xff;  // little-endian: R is the low byte
  assert.ok(red(table[0]) > red(table[50]) && red(table[50]) > red(table[100]));
  assert.ok(red(table[100]) > red(SPIKE) + 100);
  assert.equal(new Set(table.slice(101)).size, 1);
});

test("the spikes in view are the cells counted above the rung", () => {
  const codes = Uint8Array.from({ length: 5000 }, (_, i) => (i * 37) % 251);
  const counts = counted(codes);
  for (const rung of [0, 17, 127, 250, 254]) assert.equal(spikesAbove(counts, rung), codes.filter((c) => c > rung).length);
});

// What the page does with a 1000 x 1000 window, cold (the first paint) and warm (a slider step):
// the canvas's putImageData is left to the browser benchmark.
test("a 1000 x 1000 window is painted cold and thresholded warm in a few ms", () => {
  const codes = Uint8Array.from({ length: 1e6 }, (_, i) => (i * 2654435761) % 256);
  const pixels = new Uint32Array(1e6);
  const counts = counted(codes);
  let start = performance.now();
  fillPixels(pixels, codes, spikeTable(127), 1000);
  const first = performance.now() - start;
  start = performance.now();
  for (let rung = 100; rung < 110; rung++) {
    fillPixels(pixels, codes, spikeTable(rung), 1000);
    spikesAbove(counts, rung);
  }
  const step = (performance.now() - start) / 10;
  console.log(`first paint work ${first.toFixed(1)} ms, threshold step ${step.toFixed(1)} ms (1e6 cells)`);
  assert.ok(first < 60 && step < 30, `first ${first.toFixed(1)} ms, step ${step.toFixed(1)} ms`);
});

test("the state's first window is painted only while it is the view's window, at the kernel's version", () => {
  const first = { version: 0, u0: 0, t0: 0, codes: { shape: [512, 1000] } };
  assert.equal(shows(first, [0, 512, 0, 1000], 0), true);
  assert.equal(shows(first, [0, 512, 0, 500], 0), false);  // the view moved before this render
  assert.equal(shows(first, [1, 513, 0, 1000], 0), false);
  assert.equal(shows(first, [0, 512, 0, 1000], 1), false);  // the kernel changed the raster since
  assert.equal(shows({}, [0, 512, 0, 1000], 0), false);  // the kernel dropped it
  assert.equal(shows(undefined, [0, 512, 0, 1000], 0), false);
});

test("scrolling and zooming move the view and stay inside the raster", () => {
  assert.deepEqual(moveView([0, 100, 0, 200], "down", 512, 2000), [100, 200, 0, 200]);
  assert.deepEqual(moveView([450, 500, 0, 200], "down", 512, 2000), [462, 512, 0, 200]);
  assert.deepEqual(moveView([0, 100, 0, 200], "up", 512, 2000), [0, 100, 0, 200]);
  assert.deepEqual(moveView([0, 100, 0, 200], "right", 512, 2000), [0, 100, 100, 300]);
  assert.deepEqual(moveView([0, 100, 1880, 1980], "right", 512, 2000), [0, 100, 1900, 2000]);
  assert.deepEqual(moveView([0, 100, 100, 300], "in", 512, 2000), [0, 100, 150, 250]);
  assert.deepEqual(moveView([0, 100, 0, 16], "in", 512, 2000), [0, 100, 0, 16]);
  assert.deepEqual(moveView([0, 100, 1000, 1600], "out", 512, 2000), [0, 100, 700, 1900]);
  assert.deepEqual(moveView([0, 100, 0, 1500], "out", 512, 2000), [0, 100, 0, 2000]);
  assert.deepEqual(moveView([0, 100, 500, 700], "end", 512, 2000), [0, 100, 1800, 2000]);
  assert.deepEqual(moveView([0, 100, 500, 700], "home", 512, 2000), [0, 100, 0, 200]);
});

test("thresholds read as the kernel wrote them", () => {
  assert.equal(formatThreshold("zscore", 3), "z > 3.00");
  assert.equal(formatThreshold("quantile", 0.95), "quantile > 0.950");
});

test("the slider's keys step its rung within its range", () => {
  assert.equal(stepRung(60, "ArrowRight", 254), 61);
  assert.equal(stepRung(60, "ArrowDown", 254), 59);
  assert.equal(stepRung(250, "PageUp", 254), 254);
  assert.equal(stepRung(3, "PageDown", 254), 0);
  assert.equal(stepRung(60, "End", 254), 254);
  assert.equal(stepRung(60, "a", 254), null);
});
