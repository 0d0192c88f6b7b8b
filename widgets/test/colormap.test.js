import assert from "node:assert/strict";
import { test } from "node:test";

import { MAPS, colourAt, css, lut, pack } from "../src/colormap.js";

const bytes = (pixel) => [...new Uint8Array(new Uint32Array([pixel]).buffer)];

test("pack lays a pixel out as ImageData reads it: R, G, B, A", () => {
  assert.deepEqual(bytes(pack(1, 2, 3, 4)), [1, 2, 3, 4]);
  assert.deepEqual(bytes(pack(255, 0, 0)), [255, 0, 0, 255]);
});

test("colourAt interpolates between stops and clamps outside 0..1", () => {
  const stops = [[0, 0, 0], [100, 200, 50]];
  assert.deepEqual(colourAt(stops, 0.5), [50, 100, 25]);
  assert.deepEqual(colourAt(stops, -1), [0, 0, 0]);
  assert.deepEqual(colourAt(stops, 2), [100, 200, 50]);
  assert.deepEqual(colourAt(stops, NaN), [0, 0, 0]);
  assert.deepEqual(colourAt(MAPS.viridis, 1), MAPS.viridis.at(-1));
});

test("a lookup table runs from the first stop to the last; gamma < 1 lifts faint values", () => {
  const linear = lut(MAPS.blues);
  assert.equal(linear.length, 256);
  assert.deepEqual(bytes(linear[0]), [...MAPS.blues[0], 255]);
  assert.deepEqual(bytes(linear[255]), [...MAPS.blues.at(-1), 255]);
  const lifted = lut(MAPS.blues, { gamma: 0.5 });
  // value 64/255 sits at 0.25 linearly, at 0.5 through the square root: a darker blue
  assert.ok(bytes(lifted[64])[0] < bytes(linear[64])[0]);
  assert.deepEqual(bytes(lifted[64]).slice(0, 3), colourAt(MAPS.blues, Math.sqrt(64 / 255)));
});

test("css gives an rgba() string", () => {
  assert.equal(css([[0, 0, 0], [10, 20, 30]], 1, 0.5), "rgba(10, 20, 30, 0.5)");
});
