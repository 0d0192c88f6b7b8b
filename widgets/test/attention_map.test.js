import assert from "node:assert/strict";
import { test } from "node:test";

import {
  attributionMarks, formatScore, formatShare, moveFocus, shadeColours, stallMs, tokenShades,
} from "../src/attention_map.js";

test("arrow keys move the focused head within the grid", () => {
  assert.deepEqual(moveFocus([1, 2], "ArrowRight", 30, 9), [1, 3]);
  assert.deepEqual(moveFocus([1, 8], "ArrowRight", 30, 9), [1, 8]);
  assert.deepEqual(moveFocus([0, 2], "ArrowUp", 30, 9), [0, 2]);
  assert.deepEqual(moveFocus([0, 2], "ArrowDown", 30, 9), [1, 2]);
  assert.deepEqual(moveFocus([5, 0], "ArrowLeft", 30, 9), [5, 0]);
  assert.deepEqual(moveFocus([5, 4], "End", 30, 9), [5, 8]);
  assert.deepEqual(moveFocus([5, 4], "PageDown", 30, 9), [29, 4]);
  assert.equal(moveFocus([5, 4], "a", 30, 9), null);
});

test("scores print short, and a missing score as a dash", () => {
  assert.equal(formatScore(0.923), ".92");
  assert.equal(formatScore(1), "1.00");
  assert.equal(formatScore(NaN), "–");
});

test("a token's row says where it attends and its column what attends to it", () => {
  // 3x3 causal pattern (codes 0..255): row 2 = [51, 102, 102], column 1 = [0, 153, 102]
  const pattern = new Uint8Array([255, 0, 0, 102, 153, 0, 51, 102, 102]);
  const at1 = tokenShades(pattern, 3, 1);
  const close = (a, b) => assert.ok(a.every((v, i) => Math.abs(v - b[i]) < 1e-6), `${a} is not ${b}`);
  close([...at1.attends], [0.4, 0.6, 0]);
  close([...at1.attendedBy], [0, 0.6, 0.4]);
  const colours = shadeColours(at1, 1);
  assert.match(colours[0], /^rgba\(.*, 0\.63\d*\)$/);  // sqrt(0.4): blue, before the token
  assert.equal(colours.length, 3);
  assert.notEqual(colours[0].slice(0, 18), colours[2].slice(0, 18));  // after the token: another colour
  assert.equal(shadeColours(tokenShades(new Uint8Array(4), 2, 0), 0)[1], null);
});

test("a run is called stuck only after a layer's share of the work, which grows with the prompt's square", () => {
  assert.equal(stallMs(9), 60_000);
  assert.equal(stallMs(1024), 60_000);
  assert.equal(stallMs(2048), 240_000);
  assert.equal(stallMs(4096), 960_000);
});

test("a head's attribution mark is its share of the grid's largest absolute value, signed by colour", () => {
  const marks = attributionMarks([[0.5, null, -2], [1, 0, NaN]]);
  assert.deepEqual(marks.map((row) => row.map((m) => m && m.share)), [[0.25, null, -1], [0.5, 0, null]]);
  const [harm, help] = [marks[1][0].colour, marks[0][2].colour];
  assert.match(harm, /^rgba\(/);
  assert.notEqual(harm.slice(0, 18), help.slice(0, 18));  // a negative value (a lesion helps): another colour
  assert.notEqual(marks[0][0].colour, harm);  // darker with the share
  assert.deepEqual(attributionMarks([[0, 0]])[0].map((m) => m && m.share), [0, 0]);  // no division by zero
  assert.equal(formatShare(0.834), ".83");
  assert.equal(formatShare(-0.42), "−.42");
  assert.equal(formatShare(1), "1.00");
});
