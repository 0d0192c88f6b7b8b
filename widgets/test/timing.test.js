import assert from "node:assert/strict";
import { mock, test } from "node:test";

import { debounce } from "../src/timing.js";

test("a burst of calls runs once, after the quiet period, with the last arguments", () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    const seen = [];
    const f = debounce((x) => seen.push(x), 100);
    f(1);
    mock.timers.tick(50);
    f(2);
    mock.timers.tick(99);
    assert.deepEqual(seen, []);
    mock.timers.tick(1);
    assert.deepEqual(seen, [2]);
    mock.timers.tick(500);
    assert.deepEqual(seen, [2]);
  } finally {
    mock.timers.reset();
  }
});

test("cancel forgets the pending call; flush makes it now", () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    const seen = [];
    const f = debounce((x) => seen.push(x), 100);
    f("a");
    f.cancel();
    mock.timers.tick(200);
    assert.deepEqual(seen, []);
    f("b");
    f.flush();
    assert.deepEqual(seen, ["b"]);
    mock.timers.tick(200);
    f.flush();
    assert.deepEqual(seen, ["b"]);
  } finally {
    mock.timers.reset();
  }
});
