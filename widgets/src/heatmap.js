// A heatmap of byte codes drawn on a 2D canvas through a Uint32Array view of ImageData: a few
// ns a pixel, so 1e6 cells fit in a few ms, and no WebGL context (a page allows only ~16).

/**
 * Colour `codes` (0..255, one per cell, row-major) into `pixels` through `table`.
 * With `causal`, cells right of the diagonal (key after query) stay transparent.
 * @param {Uint32Array} pixels @param {Uint8Array} codes @param {Uint32Array} table
 * @param {number} width @param {{causal?: boolean}} [options]
 */
export function fillPixels(pixels, codes, table, width, { causal = false } = {}) {
  if (pixels.length !== codes.length) throw new RangeError(`${codes.length} codes for ${pixels.length} pixels`);
  for (let i = 0; i < codes.length; i++) pixels[i] = table[codes[i]];
  if (causal) {
    for (let row = 0; row * width < pixels.length; row++) pixels.fill(0, row * width + row + 1, (row + 1) * width);
  }
  return pixels;
}

/**
 * Draw `codes` (`height` rows of `width` cells) on `canvas`, one canvas pixel per cell; CSS
 * sizes the canvas on the page (`image-rendering: pixelated` keeps cells sharp).
 * @param {HTMLCanvasElement} canvas @param {Uint8Array} codes @param {number} width
 * @param {number} height @param {Uint32Array} table @param {{causal?: boolean}} [options]
 */
export function drawHeatmap(canvas, codes, width, height, table, options = {}) {
  canvas.width = Math.max(width, 1);
  canvas.height = Math.max(height, 1);
  const context = /** @type {CanvasRenderingContext2D} */ (canvas.getContext("2d"));
  const image = context.createImageData(canvas.width, canvas.height);
  if (width * height) fillPixels(new Uint32Array(image.data.buffer), codes, table, width, options);
  context.putImageData(image, 0, 0);
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
