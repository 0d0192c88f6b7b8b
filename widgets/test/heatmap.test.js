import assert from "node:assert/strict";
import { test } from "node:test";

import { cellAt, fillPixels } from "../src/heatmap.js";

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
