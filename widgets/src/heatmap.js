// @ts-check
// A heatmap of byte codes drawn on a 2D canvas through a Uint32Array view of ImageData: a few
// ns a pixel, so 1e6 cells fit in a few ms, and no WebGL context (a page allows only ~16).
//
// A canvas never shows more cells than it has pixels: the browser would scale it down by
// sampling the nearest cell, and a lone spike or a thin diagonal would vanish. When cells
// outnumber pixels they are max-pooled first: cell i of n falls in pixel floor(i * m / n) of
// m, and a pixel shows the largest code of its cells (a spike, or the strongest attention).

/**
 * Which of `m` pixels cell `i` of `n` falls in.
 * @param {number} i @param {number} n @param {number} m
 */
export function pixelOf(i, n, m) {
  return Math.floor((i * m) / n);
}

/**
 * The first cell of pixel `p` (of `m` pixels over `n` cells).
 * @param {number} p @param {number} n @param {number} m
 */
export function firstCell(p, n, m) {
  return Math.ceil((p * n) / m);
}

/**
 * How many pixels show `cells` cells in a box `pixels` wide: one a cell, up to the box.
 * @param {number} cells @param {number} pixels
 */
export function fit(cells, pixels) {
  return Math.max(1, Math.min(cells, Math.floor(pixels)));
}

/**
 * Max-pool `codes` (`height` rows of `width` cells) into `rows` x `cols` pixels.
 * @param {Uint8Array} codes @param {number} width @param {number} height @param {number} cols @param {number} rows
 * @returns {Uint8Array}
 */
export function poolMax(codes, width, height, cols, rows) {
  if (codes.length !== width * height) throw new RangeError(`${codes.length} codes for ${height} x ${width} cells`);
  if (cols === width && rows === height) return codes;
  const out = new Uint8Array(cols * rows);
  const column = new Uint32Array(width);
  for (let c = 0; c < width; c++) column[c] = pixelOf(c, width, cols);
  for (let r = 0, i = 0; r < height; r++) {
    const base = pixelOf(r, height, rows) * cols;
    for (let c = 0; c < width; c++, i++) {
      const v = codes[i];
      if (v > out[base + column[c]]) out[base + column[c]] = v;
    }
  }
  return out;
}

/**
 * Colour `codes` (0..255, one per pixel, row-major) into `pixels` through `table`. With
 * `causal` (a square of `cells` x `cells` pooled to `width` pixels a side), pixels whose every
 * cell lies right of the diagonal (a key after its query) stay transparent.
 * @param {Uint32Array} pixels @param {Uint8Array} codes @param {Uint32Array} table
 * @param {number} width @param {{causal?: boolean, cells?: number}} [options]
 */
export function fillPixels(pixels, codes, table, width, { causal = false, cells = width } = {}) {
  if (pixels.length !== codes.length) throw new RangeError(`${codes.length} codes for ${pixels.length} pixels`);
  for (let i = 0; i < codes.length; i++) pixels[i] = table[codes[i]];
  if (causal) {
    for (let row = 0; row * width < pixels.length; row++) {
      const lastCell = firstCell(row + 1, cells, width) - 1;
      let col = row + 1;
      while (col > 0 && firstCell(col, cells, width) > lastCell) col--;
      while (col < width && firstCell(col, cells, width) <= lastCell) col++;
      pixels.fill(0, row * width + col, (row + 1) * width);
    }
  }
  return pixels;
}

/** @type {WeakMap<HTMLCanvasElement, {image: ImageData, context: CanvasRenderingContext2D, pixels: Uint32Array,
 *                                       codes: Uint8Array | null, pooled: Uint8Array}>} */
const frames = new WeakMap();

/**
 * Draw `codes` (`height` rows of `width` cells) on `canvas`, one pixel a cell up to `maxWidth`
 * x `maxHeight` pixels and max-pooled beyond; CSS sizes the canvas on the page (with
 * `image-rendering: pixelated` a cell larger than a pixel stays sharp). The canvas's
 * ImageData and the pooled codes are kept while the size and the codes stay, so a repaint
 * with another table (a threshold step) only colours the pixels. Returns the pixel size.
 * @param {HTMLCanvasElement} canvas @param {Uint8Array} codes @param {number} width
 * @param {number} height @param {Uint32Array} table
 * @param {{causal?: boolean, maxWidth?: number, maxHeight?: number}} [options]
 * @returns {{width: number, height: number}}
 */
export function drawHeatmap(canvas, codes, width, height, table, { causal = false, maxWidth = width, maxHeight = height } = {}) {
  const cols = fit(width, maxWidth);
  const rows = fit(height, maxHeight);
  let frame = frames.get(canvas);
  if (!frame || frame.image.width !== cols || frame.image.height !== rows) {
    canvas.width = cols;  // setting a canvas's size, even to the same value, clears it
    canvas.height = rows;
    const context = /** @type {CanvasRenderingContext2D} */ (canvas.getContext("2d"));
    const image = context.createImageData(cols, rows);
    frame = { image, context, pixels: new Uint32Array(image.data.buffer), codes: null, pooled: new Uint8Array(0) };
    frames.set(canvas, frame);
  }
  if (width * height === 0) {
    frame.pixels.fill(0);
  } else {
    if (frame.codes !== codes) {
      frame.pooled = poolMax(codes, width, height, cols, rows);
      frame.codes = codes;
    }
    fillPixels(frame.pixels, frame.pooled, table, cols, { causal, cells: width });
  }
  frame.context.putImageData(frame.image, 0, 0);
  return { width: cols, height: rows };
}

/**
 * The cell under a pointer event on a canvas drawn by drawHeatmap, or null off the cells.
 * @param {{offsetX: number, offsetY: number}} event
 * @param {{clientWidth: number, clientHeight: number}} box the canvas's size on the page
 * @param {number} width @param {number} height cells across and down
 * @returns {{row: number, col: number} | null}
 */
export function cellAt(event, box, width, height) {
  const col = Math.floor((event.offsetX / box.clientWidth) * width);
  const row = Math.floor((event.offsetY / box.clientHeight) * height);
  return row >= 0 && row < height && col >= 0 && col < width ? { row, col } : null;
}

/**
 * How many pixels a box of `box` CSS pixels holds on this screen (its device pixels).
 * @param {number} box
 */
export function devicePixels(box) {
  return Math.round(box * (globalThis.devicePixelRatio || 1));
}
