import assert from "node:assert/strict";
import { test } from "node:test";

import { MAPS, pack } from "../src/colormap.js";
import { fillPixels } from "../src/heatmap.js";
import { barGeometry, bands, formatThreshold, moveView, shows, spikeTable, spikesAbove, tickEvery } from "../src/raster.js";

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

test("ticks go every 1, 2 or 5 times a power of ten cells, at least the asked pixels apart", () => {
  assert.equal(tickEvery(512, 400, 14), 20);  // 0.78 px a row: 18 rows make 14 px
  assert.equal(tickEvery(20, 400, 14), 1);
  assert.equal(tickEvery(1000, 500, 64), 200);
  assert.equal(tickEvery(16, 500, 64), 5);
  for (const [n, px, min] of [[512, 400, 14], [1473, 517, 64], [3, 10, 14]]) {
    const every = tickEvery(n, px, min);
    assert.ok((every * px) / n >= min || every >= n, `${n} cells over ${px} px: every ${every}`);
  }
});

test("rows sorted by a label make one band per run of a category", () => {
  assert.deepEqual(bands(["ADJ", "ADJ", "NOUN", "VERB", "VERB", "VERB"]),
                   [{ name: "ADJ", start: 0, end: 2 }, { name: "NOUN", start: 2, end: 3 }, { name: "VERB", start: 3, end: 6 }]);
  assert.deepEqual(bands([]), []);
});

test("tuning bars start at zero, negative means draw left of it, and error bars span mean ± s.e.m.", () => {
  const { zero, bars } = barGeometry([-0.022, 0.5, -0.1], [0.01, 0.1, NaN]);
  // the axis runs from -0.1 (the lowest mean - s.e.m.) to 0.6 (the highest mean + s.e.m.)
  const x = (/** @type {number} */ v) => (100 * (v + 0.1)) / 0.7;
  const close = (/** @type {number} */ a, /** @type {number} */ b) => assert.ok(Math.abs(a - b) < 1e-9, `${a} != ${b}`);
  close(zero, x(0));
  close(bars[0].left, x(-0.022));  // the negative bar ends at zero...
  close(bars[0].left + bars[0].width, zero);
  close(bars[1].left, zero);  // ...a positive one starts there
  close(bars[1].width, x(0.5) - x(0));
  close(bars[2].left, x(-0.1));
  close(/** @type {{left: number}} */ (bars[0].error).left, x(-0.032));
  close(/** @type {{width: number}} */ (bars[1].error).width, x(0.6) - x(0.4));
  assert.equal(bars[2].error, null);  // a category seen once: no s.e.m.
  const all = barGeometry([0.2, 0.3], [0, 0]);
  close(all.zero, 0);
  close(all.bars[1].width, 100);
});
