import assert from "node:assert/strict";
import { test } from "node:test";

import { MAPS, pack } from "../src/colormap.js";
import { fillPixels } from "../src/heatmap.js";
import { countSpikes, formatThreshold, moveView, spikeTable, stepRung, unitOf } from "../src/raster.js";

const SPIKE = pack(...MAPS.blues[4]);

test("a window is thresholded in the page: code > rung spikes, and nothing else does", () => {
  const codes = new Uint8Array([0, 127, 128, 255, 5, 200]);  // 2 units x 3 tokens
  for (const [rung, expected] of [[127, [0, 0, 1, 1, 0, 1]], [0, [0, 1, 1, 1, 1, 1]], [254, [0, 0, 0, 1, 0, 0]],
                                  [200, [0, 0, 0, 1, 0, 0]], [199, [0, 0, 0, 1, 0, 1]]]) {
    const pixels = fillPixels(new Uint32Array(6), codes, spikeTable(rung), 3);
    assert.deepEqual(Array.from(pixels, (p) => Number(p === SPIKE)), expected, `rung ${rung}`);
    const counts = countSpikes(codes, 3, rung);
    assert.equal(counts.total, expected.reduce((a, b) => a + b, 0));
    assert.deepEqual(Array.from(counts.rows), [expected.slice(0, 3), expected.slice(3)].map((r) => r.reduce((a, b) => a + b)));
  }
});

test("below threshold a cell greys as it nears the threshold, never as dark as a spike", () => {
  const table = spikeTable(100);
  const red = (/** @type {number} */ p) => p & 0xff;  // little-endian: R is the low byte
  assert.ok(red(table[0]) > red(table[50]) && red(table[50]) > red(table[100]));
  assert.ok(red(table[100]) > red(SPIKE) + 100);
  assert.equal(new Set(table.slice(101)).size, 1);
});

test("a 1000 x 1000 window is thresholded in a few ms", () => {
  const codes = Uint8Array.from({ length: 1e6 }, (_, i) => (i * 2654435761) % 256);
  const pixels = new Uint32Array(1e6);
  fillPixels(pixels, codes, spikeTable(127), 1000);  // warm up
  const start = performance.now();
  for (let rung = 100; rung < 110; rung++) fillPixels(pixels, codes, spikeTable(rung), 1000);
  const ms = (performance.now() - start) / 10;
  assert.ok(ms < 50, `${ms.toFixed(1)} ms per threshold change`);
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

test("unit labels and thresholds read as the kernel wrote them", () => {
  assert.equal(unitOf("mlp.0:12"), 12);
  assert.equal(unitOf("blocks.1.hook:3"), 3);
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
