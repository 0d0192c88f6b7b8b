// @ts-check
// Colour maps as 256-entry lookup tables of packed RGBA pixels, ready for a Uint32Array view
// of ImageData, plus CSS colours for shading text.

/** @typedef {Array<[number, number, number]>} Stops evenly spaced RGB colours, 0..255 each */

/** Sequential maps: light to dark on a light page. */
export const MAPS = {
  /** @type {Stops} */
  blues: [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]],
  /** @type {Stops} */
  oranges: [[255, 245, 235], [253, 208, 162], [253, 141, 60], [217, 72, 1], [127, 39, 4]],
  /** @type {Stops} */
  viridis: [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
};

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * One RGBA pixel as the Uint32 whose bytes, in this machine's order, read R, G, B, A.
 * @param {number} r @param {number} g @param {number} b @param {number} [a]
 */
export function pack(r, g, b, a = 255) {
  return (LITTLE_ENDIAN ? (a << 24) | (b << 16) | (g << 8) | r : (r << 24) | (g << 16) | (b << 8) | a) >>> 0;
}

/**
 * The colour at `x` in 0..1 along `stops`, linearly interpolated.
 * @param {Stops} stops @param {number} x
 * @returns {[number, number, number]}
 */
export function colourAt(stops, x) {
  const t = Math.min(Math.max(Number.isFinite(x) ? x : 0, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(t), stops.length - 2);
  const f = t - i;
  return /** @type {[number, number, number]} */ (
    stops[i].map((c, k) => Math.round(c + f * (stops[i + 1][k] - c))));
}

/**
 * A lookup table: entry v is the colour of the value v / 255, through `gamma` (< 1 lifts faint
 * values: with gamma 0.5 the colour follows the square root of the value).
 * @param {Stops} stops @param {{gamma?: number}} [options]
 * @returns {Uint32Array}
 */
export function lut(stops, { gamma = 1 } = {}) {
  const table = new Uint32Array(256);
  for (let v = 0; v < 256; v++) table[v] = pack(...colourAt(stops, (v / 255) ** gamma));
  return table;
}

/**
 * A CSS colour of `stops` at `x` with opacity `alpha`, for shading text and borders.
 * @param {Stops} stops @param {number} x @param {number} [alpha]
 */
export function css(stops, x, alpha = 1) {
  const [r, g, b] = colourAt(stops, x);
  return `rgba(${r}, ${g}, ${b}, ${alpha})`;
}
