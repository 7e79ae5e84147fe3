/** The Node.js library end to end: the shipped model, every kind of input, batches, and bad inputs and
 * models as typed errors (never a crash, never an unhandled rejection). */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFileSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PNG } from "pngjs";
import sharp from "sharp";
import { beforeAll, describe, expect, it } from "vitest";
import {
  CifarkitError, DEFAULT_MODEL, ImageTooLargeError, loadClassifier, MAX_PIXELS, ModelLoadError, NotAnImageError,
  type NodeClassifier,
} from "../src/node.js";

const golden = join(__dirname, "golden");
const photo = join(golden, "photo-243x181.png");
let classifier: NodeClassifier;

beforeAll(async () => {
  classifier = await loadClassifier(); // no argument: the shipped model
});

describe("the shipped model", () => {
  it("ranks the 100 CIFAR-100 classes, best first, each with its superclass", async () => {
    expect(classifier.labels).toHaveLength(100);
    expect(classifier.info.dataset).toBe("cifar100");
    const top = await classifier.classify(photo, { topK: 100 });
    expect(top).toHaveLength(100);
    expect(new Set(top.map((c) => c.label))).toEqual(new Set(classifier.labels));
    expect(top.reduce((sum, c) => sum + c.score, 0)).toBeCloseTo(1, 4);
    for (let i = 1; i < top.length; i++) expect(top[i - 1]!.score).toBeGreaterThanOrEqual(top[i]!.score);
    expect(top[0]).toMatchObject({ label: classifier.labels[top[0]!.index] });
    const { superclasses, fine_to_coarse: toCoarse } = classifier.info;
    for (const c of top) expect(c.superclass).toBe(superclasses![toCoarse![c.index]!]);
    expect(new Set(top.map((c) => c.superclass)).size).toBe(20);
  });

  it("gives the same answer for a path, a Buffer, a Uint8Array and raw pixels", async () => {
    const bytes = readFileSync(photo);
    const png = PNG.sync.read(bytes);
    const raw = { data: new Uint8Array(png.data), width: png.width, height: png.height, channels: 4 as const };
    const [a, b, c, d] = await classifier.classify([photo, bytes, new Uint8Array(bytes), raw]);
    expect(b).toEqual(a);
    expect(c).toEqual(a);
    expect(d).toEqual(a);
  });

  it("batches: a list of 70 pictures (a full batch of 64 and a partial one) gives 70 rankings equal to one-by-one", async () => {
    const one = await classifier.classify(photo, { topK: 3 });
    const many = await classifier.classify(Array(70).fill(photo) as string[], { topK: 3 });
    expect(many).toHaveLength(70);
    for (const ranking of many) {
      expect(ranking.map((c) => c.label)).toEqual(one.map((c) => c.label));
      ranking.forEach((c, i) => expect(c.score).toBeCloseTo(one[i]!.score, 5));
    }
  });

  it("takes grey and grey+alpha raw pixels", async () => {
    const grey = await classifier.classify({ data: new Uint8Array(40 * 30).fill(90), width: 40, height: 30, channels: 1 });
    const rgb = await classifier.classify({ data: new Uint8Array(40 * 30 * 3).fill(90), width: 40, height: 30, channels: 3 });
    expect(grey).toEqual(rgb);
  });
});

describe("the two ONNX Runtimes of Node.js", () => {
  it("uses onnxruntime-node where it is installed, and onnxruntime-web's WebAssembly gives the same answers", async () => {
    expect(classifier.backend).toBe("cpu"); // onnxruntime-node is a dev dependency here
    const wasm = await loadClassifier(DEFAULT_MODEL, { runtime: "onnxruntime-web" });
    try {
      expect(wasm.backend).toBe("wasm");
      const pictures = [photo, join(golden, "rgba-80x96.png"), join(golden, "grey-64x40.png")];
      const native = await classifier.classify(pictures, { topK: 5 });
      const web = await wasm.classify(pictures, { topK: 5 });
      for (const [a, b] of native.map((n, i) => [n, web[i]!] as const)) {
        expect(b.map((c) => c.label)).toEqual(a.map((c) => c.label));
        b.forEach((c, i) => expect(Math.abs(c.score - a[i]!.score)).toBeLessThan(1e-4));
      }
    } finally {
      await wasm.dispose();
    }
  });
});

let truncatedJpeg: Uint8Array;
beforeAll(async () => {
  const jpeg = await sharp(photo).jpeg({ quality: 90 }).toBuffer();
  truncatedJpeg = jpeg.subarray(0, Math.floor(jpeg.length / 2));
});

describe("bad pictures are typed errors", () => {
  const folder = mkdtempSync(join(tmpdir(), "cifarkit-classify-"));
  const write = (name: string, bytes: Uint8Array | string) => {
    writeFileSync(join(folder, name), bytes);
    return join(folder, name);
  };

  it.each([
    ["an empty file", () => write("empty.png", ""), /empty file/],
    ["text", () => write("notes.jpg", "this is not a picture"), /not an image file/],
    ["a truncated JPEG", () => write("cut.jpg", truncatedJpeg), /truncated or corrupt/],
    ["a missing file", () => join(folder, "missing.png"), /no such file/],
    ["a folder", () => folder, /is a folder/],
  ])("%s", async (_, make, message) => {
    const error = await classifier.classify(make()).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(NotAnImageError);
    expect(error).toBeInstanceOf(CifarkitError);
    expect((error as Error).message).toMatch(message);
  });

  it("refuses a decompression bomb from its header, before decoding", async () => {
    const png = PNG.sync.write(new PNG({ width: 1, height: 1 }));
    const bomb = Buffer.from(png);
    bomb.writeUInt32BE(100_000, 16); // IHDR width
    bomb.writeUInt32BE(100_000, 20); // IHDR height: 10^10 pixels
    const started = performance.now();
    const error = await classifier.classify(bomb).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ImageTooLargeError);
    expect((error as Error).message).toMatch(MAX_PIXELS.toLocaleString("en-US"));
    expect(performance.now() - started).toBeLessThan(5000);
  });

  it("rejects raw pixels of the wrong size and unknown inputs", async () => {
    await expect(classifier.classify({ data: new Uint8Array(5), width: 4, height: 4, channels: 3 })).rejects
      .toBeInstanceOf(NotAnImageError);
    await expect(classifier.classify(42 as unknown as string)).rejects.toBeInstanceOf(NotAnImageError);
    await expect(classifier.classify(photo, { topK: 0 })).rejects.toBeInstanceOf(RangeError);
  });
});

describe("none of these", () => {
  const grey = { data: new Uint8Array(32 * 32 * 3).fill(128), width: 32, height: 32, channels: 3 as const };

  it("assess gives each picture's ranking, outlier score and verdict from one pass", async () => {
    const [flat, real] = await classifier.assess([grey, photo]);
    for (const a of [flat!, real!]) {
      expect(typeof a.outlierScore).toBe("number");
      expect(a.known).toBe(a.outlierScore! <= classifier.info.outlier!.threshold);
    }
    expect(flat!.ranked).toEqual(await classifier.classify(grey));
  });

  it("a version 1 export (before features and outlier scores) still classifies, with no verdict", async () => {
    const info = JSON.parse(readFileSync(DEFAULT_MODEL.replace(/\.onnx$/, ".json"), "utf8")) as Record<string, unknown>;
    const { features: _f, outlier: _o, ...rest } = info;
    const older = { ...rest, version: 1 };
    const v1 = await loadClassifier(new Uint8Array(readFileSync(DEFAULT_MODEL)), { info: older as never });
    const a = await v1.assess(grey);
    expect(a.outlierScore).toBeNull();
    expect(a.known).toBeNull();
    expect(a.ranked).toEqual(await classifier.classify(grey));
    await v1.dispose();
  });
});

describe("bad models are ModelLoadErrors", () => {
  const folder = mkdtempSync(join(tmpdir(), "cifarkit-model-"));
  const info = JSON.parse(readFileSync(DEFAULT_MODEL.replace(/\.onnx$/, ".json"), "utf8")) as Record<string, unknown>;

  it("a missing model", async () => {
    await expect(loadClassifier(join(folder, "none.onnx"))).rejects.toThrow(ModelLoadError);
  });

  it("a damaged model (its sha256 no longer matches its metadata)", async () => {
    const bytes = new Uint8Array(readFileSync(DEFAULT_MODEL));
    bytes[bytes.length - 10] = bytes[bytes.length - 10]! ^ 0xff;
    await expect(loadClassifier(bytes, { info: info as never })).rejects.toThrow(/damaged/);
  });

  it("bytes that are not ONNX", async () => {
    const bytes = new TextEncoder().encode("not a model");
    const digest = createHash("sha256").update(bytes).digest("hex"); // intact, so ONNX Runtime is what refuses it
    await expect(loadClassifier(bytes, { info: { ...info, model_sha256: digest } as never }))
      .rejects.toThrow(/not an ONNX model/);
  });

  it("metadata that is not a cifarkit export", async () => {
    copyFileSync(DEFAULT_MODEL, join(folder, "m.onnx"));
    writeFileSync(join(folder, "m.json"), JSON.stringify({ hello: "world" }));
    await expect(loadClassifier(join(folder, "m.onnx"))).rejects.toThrow(/not the metadata of a cifarkit export/);
    writeFileSync(join(folder, "m.json"), "{ not json");
    await expect(loadClassifier(join(folder, "m.onnx"))).rejects.toThrow(/not JSON/);
  });

  it("metadata whose class count differs from the model's outputs", async () => {
    copyFileSync(DEFAULT_MODEL, join(folder, "w.onnx"));
    const classes = Array.from({ length: 1000 }, (_, i) => `class${i}`);
    writeFileSync(join(folder, "w.json"), JSON.stringify({ ...info, classes, fine_to_coarse: null, superclasses: null }));
    await expect(loadClassifier(join(folder, "w.onnx"))).rejects.toThrow(/do not belong together/);
  });

  it("a model.json or model.onnx that is a FIFO, a device or a folder is refused at once", async () => {
    copyFileSync(DEFAULT_MODEL, join(folder, "f.onnx"));
    execFileSync("mkfifo", [join(folder, "f.json")]);
    await expect(loadClassifier(join(folder, "f.onnx"))).rejects.toThrow(/FIFO/);
    symlinkSync("/dev/zero", join(folder, "z.onnx"));
    await expect(loadClassifier(join(folder, "z.onnx"))).rejects.toThrow(/a device/);
  });

  it("bytes without metadata", async () => {
    await expect(loadClassifier(readFileSync(DEFAULT_MODEL))).rejects.toThrow(/needs its metadata/);
  });
});

describe("picture sizes read from the header (what the page checks before decoding)", () => {
  it("reads PNG, JPEG, WebP (lossy and lossless), GIF and BMP headers as their decoders do", async () => {
    const { headerSize } = await import("../src/core.js");
    const raw = { raw: { width: 37, height: 23, channels: 3 as const } };
    const pixels = Buffer.alloc(37 * 23 * 3, 90);
    for (const format of ["png", "jpeg", "webp", "gif"] as const) {
      const encoded = await sharp(pixels, raw).toFormat(format).toBuffer();
      expect(headerSize(encoded), format).toEqual({ width: 37, height: 23 });
    }
    const lossless = await sharp(pixels, raw).webp({ lossless: true }).toBuffer();
    expect(headerSize(lossless)).toEqual({ width: 37, height: 23 });
    const bmp = Buffer.alloc(54);
    bmp.write("BM", 0, "ascii");
    bmp.writeInt32LE(37, 18);
    bmp.writeInt32LE(-23, 22); // top-down rows
    expect(headerSize(bmp)).toEqual({ width: 37, height: 23 });
    expect(headerSize(new Uint8Array([1, 2, 3]))).toBeNull();
  });

  it("refuses a small file that declares a huge picture, from its header alone", async () => {
    const { checkSize, headerSize } = await import("../src/core.js");
    const png = new PNG({ width: 4, height: 4 });
    const bytes = PNG.sync.write(png);
    bytes.writeUInt32BE(20000, 16); // IHDR's width and height: 20000 x 20000
    bytes.writeUInt32BE(20000, 20);
    const declared = headerSize(bytes)!;
    expect(declared).toEqual({ width: 20000, height: 20000 });
    expect(() => checkSize(declared.width, declared.height)).toThrow(ImageTooLargeError);
  });
});

describe("dispose", () => {
  it("fails a call in flight, and any later call, with a typed error", async () => {
    const { ClassifierDisposedError } = await import("../src/node.js");
    const own = await loadClassifier();
    const pixels = Array.from({ length: 512 }, () => new Uint8Array(32 * 32 * 3).fill(120));
    const inFlight = own.classifyPixels(pixels).then(() => "finished", (error: unknown) => error);
    await own.dispose();
    const outcome = await inFlight;
    expect(outcome === "finished" || outcome instanceof ClassifierDisposedError).toBe(true);
    await expect(own.classifyPixels(pixels.slice(0, 1))).rejects.toThrow(ClassifierDisposedError);
    await own.dispose(); // twice is fine
  });
});
