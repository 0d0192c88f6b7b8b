import assert from "node:assert/strict";
import { test } from "node:test";

import { describeGain, distributionRows, metricText, percent, toGain } from "../src/ablation_panel.js";

test("a gain reads as what it does to its units", () => {
  assert.equal(describeGain(0), "×0.00 lesioned");
  assert.equal(describeGain(1), "×1.00 intact");
  assert.equal(describeGain(0.5), "×0.50 weakened");
  assert.equal(describeGain(1.75), "×1.75 stimulated");
});

test("a slider value snaps to the kernel's gain grid and stays in its range", () => {
  const range = { min: 0, max: 2, step: 0.05 };  // as the kernel's _meta sends it
  assert.equal(toGain("0.95", range), 0.95);
  assert.equal(toGain("0.97", range), 0.95);
  assert.equal(toGain("3", range), 2);
  assert.equal(toGain("-1", range), 0);
  assert.ok(Number.isNaN(toGain("x", range)));
  assert.equal(toGain("2.9", { min: 0, max: 4, step: 0.5 }), 3);
});

test("the metric line shows value, baseline and change, and a missing value as a dash", () => {
  assert.equal(metricText({ name: "loss", base: 2.5, now: 3 }), "loss (nats): 3.000  baseline 2.500  change +0.500");
  assert.equal(metricText({ name: "logit_diff", base: 4, now: 1.5 }),
               "logit difference (good − bad): 1.500  baseline 4.000  change -2.500");
  assert.equal(metricText({ name: "loss", base: 2, now: null }), "loss (nats): –  baseline 2.000  change –");
});

test("distribution rows come most probable first, under either distribution", () => {
  const rows = distributionRows([7, 8, 9], ["a", "<b>", "c"], [0.5, 0.1, 0.2], [0.1, 0.7, 0.05]);
  assert.deepEqual(rows.map((r) => r.id), [8, 7, 9]);
  assert.deepEqual(rows[0], { id: 8, text: "<b>", base: 0.1, now: 0.7 });
});

test("probabilities become bar widths and short percentages", () => {
  assert.deepEqual(percent(0.5), { width: 50, text: "50%" });
  assert.deepEqual(percent(0.012), { width: 1.2, text: "1.2%" });
  assert.deepEqual(percent(NaN), { width: 0, text: "0.0%" });
  assert.equal(percent(1.5).width, 100);
});
