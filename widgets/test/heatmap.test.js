import assert from "node:assert/strict";
import { test } from "node:test";

import { cellAt, fillPixels, fit, pixelOf, poolMax } from "../src/heatmap.js";

const table = Uint32Array.from({ length: 256 }, (_, v) => 1000 + v);

test("fillPixels colours every cell through the table", () => {
  const out = fillPixels(new Uint32Array(4), new Uint8Array([0, 1, 254, 255]), table, 2);
  assert.deepEqual([...out], [1000, 1001, 1254, 1255]);
});

test("causal leaves the cells right of the diagonal transparent", () => {
  const codes = new Uint8Array(9).fill(7);
  const out = fillPixels(new Uint32Array(9), codes, table, 3, { causal: true });
  assert.deepEqual([...out], [1007, 0, 0, 1007, 1007, 0, 1007, 1007, 1007]);
});

test("fillPixels refuses codes that do not match the pixels", () => {
  assert.throws(() => fillPixels(new Uint32Array(4), new Uint8Array(3), table, 2), RangeError);
});

test("cellAt maps a pointer on the scaled canvas to its cell", () => {
  const box = { clientWidth: 300, clientHeight: 300 };
  assert.deepEqual(cellAt({ offsetX: 0, offsetY: 299 }, box, 3, 3), { row: 2, col: 0 });
  assert.deepEqual(cellAt({ offsetX: 150, offsetY: 99 }, box, 3, 3), { row: 0, col: 1 });
  assert.equal(cellAt({ offsetX: 300, offsetY: 0 }, box, 3, 3), null);
  assert.equal(cellAt({ offsetX: -1, offsetY: 0 }, box, 3, 3), null);
});

test("a canvas shows one pixel a cell, up to its size", () => {
  assert.equal(fit(100, 360), 100);
  assert.equal(fit(3000, 360), 360);
  assert.equal(fit(3000, 359.7), 359);
  assert.equal(fit(0, 360), 1);
});

test("pooling keeps the largest code of every block: a lone spike or a thin diagonal is never lost", () => {
  const [width, height, cols, rows] = [1000, 512, 517, 398];
  const codes = new Uint8Array(width * height);
  const spikes = [[0, 0], [1, 1], [511, 999], [300, 501], [17, 2], [18, 2]];
  for (const [r, c] of spikes) codes[r * width + c] = 200;
  const pooled = poolMax(codes, width, height, cols, rows);
  assert.equal(pooled.length, cols * rows);
  for (const [r, c] of spikes) assert.equal(pooled[pixelOf(r, height, rows) * cols + pixelOf(c, width, cols)], 200);
  const marked = new Set(spikes.map(([r, c]) => pixelOf(r, height, rows) * cols + pixelOf(c, width, cols)));
  assert.equal(pooled.filter((v) => v > 0).length, marked.size);  // and nothing else is marked
  const n = 3000;  // a previous-token head: every cell just below the diagonal
  const diagonal = new Uint8Array(n * n);
  for (let i = 1; i < n; i++) diagonal[i * n + i - 1] = 255;
  const small = poolMax(diagonal, n, n, 360, 360);
  for (let p = 1; p < 360; p++) assert.ok(small[p * 360 + p] === 255 || small[p * 360 + p - 1] === 255, `pixel row ${p}`);
  assert.equal(poolMax(codes, width, height, width, height), codes);  // nothing to pool
});

test("pooled causal pixels are transparent only where every cell is a key after its query", () => {
  const n = 7;
  const codes = new Uint8Array(n * n).fill(9);
  const out = fillPixels(new Uint32Array(9), poolMax(codes, n, n, 3, 3), table, 3, { causal: true, cells: n });
  // pixel columns start at cells 0, 3, 5; pixel rows end at cells 2, 4, 6
  assert.deepEqual([...out], [1009, 0, 0, 1009, 1009, 0, 1009, 1009, 1009]);
  const wide = fillPixels(new Uint32Array(4), poolMax(new Uint8Array(9), 3, 3, 2, 2), table, 2, { causal: true, cells: 3 });
  assert.deepEqual([...wide], [1000, 0, 1000, 1000]);  // pixel (0, 1): rows 0-1, key 2, all after the query
});
