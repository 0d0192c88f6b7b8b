import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { test } from "node:test";

import { describe } from "../src/alert.js";
import { displayText, stepToken } from "../src/tokens.js";
import { KernelError } from "../src/wire.js";

test("displayText shows invisible characters and keeps markup as plain characters", () => {
  assert.equal(displayText("a\nb\r\nc\td"), "a↵b↵c⇥d");
  assert.equal(displayText(""), "∅");
  assert.equal(displayText("<img src=x onerror=alert(1)>"), "<img src=x onerror=alert(1)>");
});

test("displayText shows spaces at either end of a token, and a lone space, as ␣", () => {
  assert.equal(displayText(" "), "␣");
  assert.equal(displayText("  "), "␣␣");
  assert.equal(displayText(" Paris"), "␣Paris");
  assert.equal(displayText("a b "), "a b␣");
  assert.equal(displayText(" \n"), "␣↵");
});

test("stepToken moves along the strip with the arrow keys, clamped", () => {
  assert.equal(stepToken(null, "ArrowRight", 3), 0);
  assert.equal(stepToken(1, "ArrowLeft", 3), 0);
  assert.equal(stepToken(0, "ArrowLeft", 3), 0);
  assert.equal(stepToken(2, "ArrowRight", 3), 2);
  assert.equal(stepToken(1, "End", 3), 2);
  assert.equal(stepToken(1, "Enter", 3), null);
  assert.equal(stepToken(null, "Home", 0), null);
});

test("describe shows a kernel error as its Python type and message, with the traceback apart", () => {
  const error = new KernelError({ type: "PromptError", message: "empty prompt", traceback: "Traceback..." });
  assert.deepEqual(describe(error), { summary: "PromptError: empty prompt", detail: "Traceback..." });
  assert.deepEqual(describe(new TypeError("x is undefined")), { summary: "TypeError: x is undefined", detail: "" });
  assert.deepEqual(describe("oops"), { summary: "Error: oops", detail: "" });
});

test("no widget source writes markup: text goes in through textContent and Text nodes only", () => {
  // the property names are split so that this file does not itself contain them
  const markup = new RegExp(["inner" + "HTML", "outer" + "HTML", "insertAdjacent" + "HTML", "document\\.wri" + "te"].join("|"));
  const dir = new URL("../src/", import.meta.url);
  const offenders = readdirSync(dir).filter((f) => f.endsWith(".js") && markup.test(readFileSync(new URL(f, dir), "utf8")));
  assert.deepEqual(offenders, []);
});
