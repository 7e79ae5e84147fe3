import { readFileSync } from "node:fs";
import { join } from "node:path";
import { PNG } from "pngjs";
import { describe, expect, it } from "vitest";
import { compositeOnWhite, resizeBilinear, toModelPixels, type Fit } from "../src/preprocess.js";

interface GoldenCase {
  file: string;
  fit?: Fit; // absent: "squash"
  pixels: number[];
}

const folder = join(__dirname, "golden");
const golden = JSON.parse(readFileSync(join(folder, "golden.json"), "utf8")) as GoldenCase[];

describe("preprocessing matches cifarkit predict (golden vectors from Python)", () => {
  it.each(golden.map((c) => [`${c.file} (${c.fit ?? "squash"})`, c] as const))("%s", (_, { file, fit, pixels }) => {
    const png = PNG.sync.read(readFileSync(join(folder, file)));
    const got = toModelPixels({ width: png.width, height: png.height, data: png.data }, fit);
    expect(got.length).toBe(32 * 32 * 3);
    let worst = 0;
    for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i]! - pixels[i]!));
    expect(worst).toBe(0); // exactly: the same arithmetic as Pillow
  });
});

describe("building blocks", () => {
  it("leaves opaque pixels unchanged and makes transparent ones white", () => {
    const data = new Uint8Array([10, 20, 30, 255, 10, 20, 30, 0]);
    expect(Array.from(compositeOnWhite({ width: 2, height: 1, data }))).toEqual([10, 20, 30, 255, 255, 255]);
  });

  it("returns a 32x32 picture unchanged", () => {
    const rgb = Uint8Array.from({ length: 32 * 32 * 3 }, (_, i) => i % 251);
    expect(resizeBilinear(rgb, 32, 32)).toEqual(rgb);
  });

  it("averages a uniform picture to the same colour", () => {
    const rgb = new Uint8Array(100 * 60 * 3).fill(77);
    expect(new Set(resizeBilinear(rgb, 100, 60))).toEqual(new Set([77]));
  });
});

describe("Pillow's order of passes", () => {
  it("shrinks tall pictures vertically first, as Pillow 13 does (fixtures from Pillow in golden.json)", () => {
    // 45x60 and 33x64 go vertical-first in Pillow 13; 60x45 and 64x96 horizontal-first: golden.json holds
    // cases of both kinds, and the test above requires them exact.
    const kinds = golden.map(({ file }) => {
      const png = PNG.sync.read(readFileSync(join(folder, file)));
      const [w, h] = [png.width, png.height];
      return h > 32 && h - 32 > 2 * (w - 32) ? "vertical-first" : "horizontal-first";
    });
    expect(new Set(kinds)).toEqual(new Set(["vertical-first", "horizontal-first"]));
  });
});
