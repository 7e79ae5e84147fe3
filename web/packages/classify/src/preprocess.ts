/**
 * Picture -> the 32x32 RGB uint8 pixels a cifarkit model takes, exactly as Python's `cifarkit predict`
 * prepares them (src/cifarkit/images.py):
 *   1. the platform decodes the file (the browser, or sharp in Node.js) and applies its EXIF orientation;
 *   2. transparency is composited onto white with Pillow's integer arithmetic (Image.alpha_composite);
 *   3. the whole picture is resized to 32x32 with Pillow's antialiased bilinear filter, reproduced here
 *      coefficient for coefficient (its two passes in its order, 22-bit fixed point, rounded).
 * Golden vectors written by the Python side check this (test/preprocess.test.ts, and in Chromium).
 */

export const SIZE = 32;

export interface RGBAImage {
  width: number;
  height: number;
  data: Uint8ClampedArray | Uint8Array; // RGBA, row-major
}

/** Pillow's AlphaComposite.c over an opaque white background, per channel. */
export function compositeOnWhite(image: RGBAImage): Uint8Array {
  const { width, height, data } = image;
  const out = new Uint8Array(width * height * 3);
  const PRECISION = 7;
  for (let i = 0, o = 0; i < width * height * 4; i += 4, o += 3) {
    const alpha = data[i + 3]!;
    const blend = 255 * (255 - alpha); // the background is opaque: dst.a = 255
    const outa255 = alpha * 255 + blend;
    const coef1 = Math.floor((alpha * 255 * 255 * (1 << PRECISION)) / outa255);
    const coef2 = 255 * (1 << PRECISION) - coef1;
    for (let c = 0; c < 3; c++) {
      const tmp = data[i + c]! * coef1 + 255 * coef2 + (0x80 << PRECISION);
      const div255 = ((tmp >>> 8) + tmp) >>> 8; // SHIFTFORDIV255
      out[o + c] = div255 >>> PRECISION;
    }
  }
  return out;
}

interface Coefficients {
  bounds: Int32Array; // per output pixel: first input index, count
  weights: Float64Array[]; // fixed-point weights per output pixel
}

const PRECISION_BITS = 32 - 8 - 2;

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc for the bilinear filter (support 1). */
function coefficients(inSize: number, outSize: number): Coefficients {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1.0);
  const support = 1.0 * filterScale;
  const bounds = new Int32Array(outSize * 2);
  const weights: Float64Array[] = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterScale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    const k = new Float64Array(xmax);
    let total = 0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      const w = t < 1.0 ? 1.0 - t : 0.0;
      k[x] = w;
      total += w;
    }
    for (let x = 0; x < xmax; x++) {
      const w = total !== 0 ? k[x]! / total : k[x]!;
      // C: (int)(w * (1 << PRECISION_BITS) + (w < 0 ? -0.5 : 0.5)), truncating toward zero
      k[x] = Math.trunc(w * (1 << PRECISION_BITS) + (w < 0 ? -0.5 : 0.5));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
    weights.push(k);
  }
  return { bounds, weights };
}

function clip8(value: number): number {
  const v = Math.floor(value / (1 << PRECISION_BITS)); // an arithmetic >> on the C side
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** One horizontal pass: `width` -> `outW` columns, every row. */
function resizeRows(rgb: Uint8Array, width: number, height: number, outW: number): Uint8Array {
  const half = 1 << (PRECISION_BITS - 1);
  const { bounds, weights } = coefficients(width, outW);
  const out = new Uint8Array(outW * height * 3);
  for (let y = 0; y < height; y++) {
    for (let xx = 0; xx < outW; xx++) {
      const xmin = bounds[xx * 2]!;
      const k = weights[xx]!;
      for (let c = 0; c < 3; c++) {
        let ss = half;
        for (let x = 0; x < k.length; x++) ss += rgb[(y * width + x + xmin) * 3 + c]! * k[x]!;
        out[(y * outW + xx) * 3 + c] = clip8(ss);
      }
    }
  }
  return out;
}

/** One vertical pass: `height` -> `outH` rows, every column. */
function resizeColumns(rgb: Uint8Array, width: number, height: number, outH: number): Uint8Array {
  const half = 1 << (PRECISION_BITS - 1);
  const { bounds, weights } = coefficients(height, outH);
  const out = new Uint8Array(width * outH * 3);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[yy * 2]!;
    const k = weights[yy]!;
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) {
        let ss = half;
        for (let y = 0; y < k.length; y++) ss += rgb[((y + ymin) * width + x) * 3 + c]! * k[y]!;
        out[(yy * width + x) * 3 + c] = clip8(ss);
      }
    }
  }
  return out;
}

/** Resize packed RGB (3 channels) with Pillow's bilinear filter, in Pillow's order of passes: horizontal
 * first, except (Pillow 13, python-pillow/Pillow#9549) when the height shrinks by more than twice as many
 * pixels as the width does, where the vertical pass goes first. The order changes the rounding. */
export function resizeBilinear(rgb: Uint8Array, width: number, height: number, outW = SIZE, outH = SIZE): Uint8Array {
  if (width === outW && height === outH) return rgb.slice(); // Pillow returns a copy unchanged
  const horizontal = outW !== width;
  const vertical = outH !== height;
  if (vertical && height > outH && height - outH > 2 * (width - outW)) {
    const rows = resizeColumns(rgb, width, height, outH);
    return horizontal ? resizeRows(rows, width, outH, outW) : rows;
  }
  const columns = horizontal ? resizeRows(rgb, width, height, outW) : rgb;
  return vertical ? resizeColumns(columns, outW, height, outH) : columns;
}

/** The largest centred square of a picture (offsets rounded down), as Pillow's crop takes it. */
export function centreSquare(image: RGBAImage): RGBAImage {
  const side = Math.min(image.width, image.height);
  const left = Math.floor((image.width - side) / 2);
  const top = Math.floor((image.height - side) / 2);
  if (side === image.width && side === image.height) return image;
  const data = new Uint8Array(side * side * 4);
  for (let y = 0; y < side; y++) {
    const from = ((top + y) * image.width + left) * 4;
    data.set(image.data.subarray(from, from + side * 4), y * side * 4);
  }
  return { width: side, height: side, data };
}

/** How a picture becomes square before it is shrunk to 32x32, as cifarkit.images.FITS: "squash" resizes the
 * whole picture (its shape distorted), "crop" keeps its centre square (its edges lost). */
export const FITS = { squash: (image: RGBAImage) => image, crop: centreSquare } as const;
export type Fit = keyof typeof FITS;
export const DEFAULT_FIT: Fit = "squash";

/** The model's input: 32x32x3 uint8, NHWC, RGB. */
export function toModelPixels(image: RGBAImage, fit: Fit = DEFAULT_FIT): Uint8Array {
  const make = FITS[fit];
  if (!make) throw new RangeError(`fit must be one of ${Object.keys(FITS).join(", ")}, got ${String(fit)}`);
  const square = make(image);
  return resizeBilinear(compositeOnWhite(square), square.width, square.height);
}
