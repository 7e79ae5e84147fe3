/**
 * @cifarkit/classify for Node.js: ONNX Runtime (onnxruntime-node where installed, else onnxruntime-web's
 * WebAssembly build) and sharp for decoding.
 *
 *   import { loadClassifier } from "@cifarkit/classify";
 *   const classifier = await loadClassifier();                      // the shipped CIFAR-100 model
 *   const results = await classifier.classify("cat.jpg", { topK: 5 });
 */
import { constants } from "node:fs";
import { open } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import type { InferenceSession } from "onnxruntime-common";
import sharp from "sharp";
import {
  checkSize, Classifier, ImageTooLargeError, isRawPixels, MAX_PIXELS, ModelLoadError, NotAnImageError, openClassifier,
  parseModelInfo, rawToRGBA, type LoadOptions, type OrtModule, type RawPixels,
} from "./core.js";
import type { RGBAImage } from "./preprocess.js";

export * from "./core.js";
export { centreSquare, DEFAULT_FIT, FITS, SIZE, toModelPixels, type Fit, type RGBAImage } from "./preprocess.js";

/** A file path, the bytes of an encoded picture (PNG, JPEG, WebP, GIF, TIFF, AVIF...), or decoded pixels. */
export type NodeImageInput = string | URL | Buffer | Uint8Array | ArrayBuffer | RawPixels;
export type NodeClassifier = Classifier<NodeImageInput>;

/** The package's own model: cifarkit's resnetd-wide-gpu-refit-cifar100 export (100 classes, 20 superclasses). */
export const DEFAULT_MODEL = fileURLToPath(new URL("../model/model.onnx", import.meta.url));

const FILE_ERRORS: Record<string, string> = {
  ENOENT: "no such file",
  EISDIR: "is a folder",
  EACCES: "permission denied (cannot read the file)",
  ELOOP: "too many levels of symbolic links",
};

/** The most a file of each kind can be: larger is refused before reading (a 40-megapixel TIFF is ~120 MB). */
export const MAX_FILE_BYTES = { picture: 256 * 2 ** 20, model: 256 * 2 ** 20 } as const;

/** A path as the user wrote it: bytes that are not UTF-8 (a Buffer path) shown as \xNN, as Python does. */
export function displayPath(path: string | URL | Buffer): string {
  if (!Buffer.isBuffer(path)) return String(path);
  let out = "";
  const text = new TextDecoder("utf-8", { fatal: false });
  for (let i = 0; i < path.length;) {
    // the longest valid UTF-8 sequence at i, else one byte as \xNN
    let taken = 0;
    for (const n of [1, 2, 3, 4]) {
      const piece = path.subarray(i, i + n);
      if (piece.length === n && !text.decode(piece).includes("\uFFFD")) { taken = n; break; }
    }
    if (taken) { out += text.decode(path.subarray(i, i + taken)); i += taken; }
    else { out += `\\x${path[i]!.toString(16).padStart(2, "0")}`; i += 1; }
  }
  return out;
}

/** The bytes of a regular file, at most `MAX_FILE_BYTES[what]`: a FIFO, a device (/dev/zero), a folder or a
 * file larger than such a file can be is refused at once, never read without end or waited on forever. */
async function readInput(path: string | URL | Buffer, what: "picture" | "model"): Promise<Uint8Array> {
  const fail = (reason: string) => {
    const message = `${displayPath(path)}: ${reason}`;
    return what === "model" ? new ModelLoadError(message) : new NotAnImageError(message);
  };
  let handle;
  try {
    // O_NONBLOCK: opening a FIFO without a writer returns at once instead of waiting for one
    handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "";
    throw fail(FILE_ERRORS[code] ?? (error as Error).message);
  }
  try {
    const info = await handle.stat();
    if (!info.isFile()) {
      throw fail(`is ${info.isDirectory() ? "a folder" : info.isFIFO() ? "a FIFO (named pipe)"
        : info.isCharacterDevice() || info.isBlockDevice() ? "a device" : "not a regular file"}; only regular files are read`);
    }
    const limit = MAX_FILE_BYTES[what];
    if (info.size > limit) throw fail(`is ${(info.size / 2 ** 20).toFixed(1)} MiB, more than the ${limit / 2 ** 20} MiB such a file can be`);
    const bytes = new Uint8Array(info.size);
    let read = 0;
    while (read < info.size) {
      const { bytesRead } = await handle.read(bytes, read, info.size - read, read);
      if (bytesRead === 0) break;
      read += bytesRead;
    }
    return read === info.size ? bytes : bytes.subarray(0, read);
  } catch (error) {
    if (error instanceof ModelLoadError || error instanceof NotAnImageError) throw error;
    throw fail((error as Error).message);
  } finally {
    await handle.close();
  }
}

/** Buffers marked by `pathBuffer` name files; unmarked ones are picture bytes. */
const PATH_BUFFERS = new WeakSet<Buffer>();
export function pathBuffer(name: Buffer): Buffer {
  PATH_BUFFERS.add(name);
  return name;
}
function isPathBuffer(input: Buffer): boolean {
  return PATH_BUFFERS.has(input);
}

/** Colour spaces and sample types whose conversion to 8-bit sRGB differs between sharp (libvips, with colour
 * management) and Pillow (naive formulas, or none for LAB): refused on both sides with the same message, so
 * that the two never silently disagree. */
function checkConvertible(space: string | undefined, depth: string | undefined, label: string): void {
  if (space === "cmyk" || space === "lab" || space === "labs" || space === "labq") {
    throw new NotAnImageError(`${label}: ${space.toUpperCase().slice(0, 4) === "CMYK" ? "CMYK" : "LAB"} pictures are ` +
      "not converted (sharp and Pillow turn them into different RGB); convert it to RGB first");
  }
  if (depth === "float" || depth === "double" || depth === "complex" || depth === "dpcomplex") {
    throw new NotAnImageError(`${label}: floating-point pictures are not converted (no agreed 0-255 range); ` +
      "convert it to 8 or 16 bits first");
  }
}

/** Decode with sharp as Pillow does for `cifarkit predict`: EXIF orientation applied, 8-bit sRGB + alpha. */
export async function decodeImage(input: NodeImageInput): Promise<RGBAImage> {
  if (isRawPixels(input)) return rawToRGBA(input);
  // a path: a string, a file: URL, or a Buffer holding a file name's raw bytes (names that are not UTF-8);
  // any other bytes are an encoded picture
  const isPath = typeof input === "string" || input instanceof URL || (Buffer.isBuffer(input) && isPathBuffer(input));
  const label = isPath ? displayPath(input as string | URL | Buffer) : "the picture";
  const bytes = isPath ? await readInput(input as string | URL | Buffer, "picture")
    : input instanceof ArrayBuffer ? new Uint8Array(input) : input as Uint8Array;
  if (!(bytes instanceof Uint8Array)) {
    throw new NotAnImageError("expected a file path, encoded image bytes (Buffer/Uint8Array) or raw pixels " +
      "{ data, width, height, channels }");
  }
  if (bytes.length === 0) throw new NotAnImageError(`${label}: empty file`);
  try {
    // the header first: a picture over the limit is refused before its pixels are decoded
    const meta = await sharp(bytes, { limitInputPixels: false }).metadata();
    checkSize(meta.autoOrient?.width ?? meta.width ?? 0, meta.autoOrient?.height ?? meta.height ?? 0, label);
    checkConvertible(meta.space, meta.depth, label);
    const { data, info } = await sharp(bytes, { limitInputPixels: MAX_PIXELS, failOn: "error" })
      .rotate() // EXIF orientation, as ImageOps.exif_transpose
      .toColourspace("srgb") // 8 bits per channel, grey and palette pictures as RGB
      .ensureAlpha()
      .raw()
      .toBuffer({ resolveWithObject: true });
    return { width: info.width, height: info.height, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
  } catch (error) {
    if (error instanceof ImageTooLargeError || error instanceof NotAnImageError) throw error;
    const text = (error as Error).message;
    if (/pixel limit/i.test(text)) throw new ImageTooLargeError(`${label}: over the limit of ${MAX_PIXELS} pixels`);
    // libvips cannot even open some LAB TIFFs ("bad labq format"): the same refusal as any LAB picture
    if (/\blab[qs]?\b|labq/i.test(text)) checkConvertible("lab", undefined, label);
    const kind = /unsupported image format/i.test(text) ? "not an image file (or a format sharp cannot read)"
      : `truncated or corrupt image (${text.split("\n")[0]})`;
    throw new NotAnImageError(`${label}: ${kind}`, { cause: error });
  }
}

/** The ONNX Runtime that runs models in Node.js: onnxruntime-node (native, faster) where it is installed,
 * else onnxruntime-web's WebAssembly build, which this package installs (no install script, nothing
 * downloaded from outside the npm registry). `options.runtime` picks one. */
async function nodeRuntime(options: LoadOptions): Promise<{ ort: OrtModule; backends: string[];
                                                           session: InferenceSession.SessionOptions }> {
  const threads = options.threads ? { intraOpNumThreads: options.threads } : {};
  if (options.runtime !== "onnxruntime-web") {
    try {
      const ort = (await import("onnxruntime-node")) as unknown as OrtModule;
      return { ort, backends: ["cpu"], session: threads };
    } catch (error) {
      if (options.runtime === "onnxruntime-node") {
        throw new ModelLoadError("onnxruntime-node is not installed or does not load here " +
          `(ONNXRUNTIME_NODE_INSTALL=skip npm install onnxruntime-node): ${String(error).split("\n")[0]}`, { cause: error });
      }
    }
  }
  const web = await import("onnxruntime-web");
  web.env.wasm.numThreads = options.threads ?? 1; // one thread unless asked: no worker threads left running
  return { ort: web as unknown as OrtModule, backends: ["wasm"], session: {} };
}

/** Open a model: a path or file: URL to model.onnx (model.json beside it), or its bytes with `options.info`.
 * No argument: the model that ships with the package. */
export async function loadClassifier(model: string | URL | Uint8Array | ArrayBuffer = DEFAULT_MODEL,
                                     options: LoadOptions = {}): Promise<NodeClassifier> {
  const isPath = typeof model === "string" || model instanceof URL;
  const where = isPath ? String(model) : "the model bytes";
  const bytes = isPath ? await readInput(model, "model") : new Uint8Array(model);
  let info: unknown = options.info;
  let infoWhere = "options.info";
  if (!info) {
    if (!isPath) throw new ModelLoadError("a model given as bytes needs its metadata: loadClassifier(bytes, { info })");
    infoWhere = String(model instanceof URL ? fileURLToPath(model) : model).replace(/(\.onnx)?$/, ".json");
    info = parseModelInfo(await readInput(infoWhere, "model"), infoWhere);
  }
  const runtime = await nodeRuntime(options);
  return openClassifier<NodeImageInput>({ bytes, where, info, infoWhere, ort: runtime.ort, backends: runtime.backends,
                                          decode: decodeImage, sessionOptions: runtime.session }, options);
}
