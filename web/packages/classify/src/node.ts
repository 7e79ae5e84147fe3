/**
 * @cifarkit/classify for Node.js: ONNX Runtime (onnxruntime-node, CPU) and sharp for decoding.
 *
 *   import { loadClassifier } from "@cifarkit/classify";
 *   const classifier = await loadClassifier();                      // the shipped CIFAR-10 model
 *   const results = await classifier.classify("cat.jpg", { topK: 5 });
 */
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import * as ort from "onnxruntime-node";
import sharp from "sharp";
import {
  checkModelBytes, checkModelInfo, checkSession, checkSize, Classifier, DEFAULT_BATCH, ImageTooLargeError,
  isRawPixels, MAX_PIXELS, ModelLoadError, NotAnImageError, rawToRGBA, type ModelInfo, type RawPixels,
} from "./core.js";
import type { RGBAImage } from "./preprocess.js";

export * from "./core.js";
export { SIZE, toModelPixels, type RGBAImage } from "./preprocess.js";

/** A file path, the bytes of an encoded picture (PNG, JPEG, WebP, GIF, TIFF, AVIF...), or decoded pixels. */
export type NodeImageInput = string | URL | Uint8Array | ArrayBuffer | RawPixels;
export type NodeClassifier = Classifier<NodeImageInput>;

export interface LoadOptions {
  /** model.json's contents (default: read from beside the model file; required when the model is bytes) */
  info?: ModelInfo;
  /** pictures per ONNX Runtime call (default 64) */
  batchSize?: number;
  /** ONNX Runtime threads within an operator (default: ONNX Runtime's choice) */
  threads?: number;
}

/** The model that ships with the package: cifarkit's airbench-cifar10 export. */
export const DEFAULT_MODEL = fileURLToPath(new URL("../model/model.onnx", import.meta.url));

const FILE_ERRORS: Record<string, string> = {
  ENOENT: "no such file",
  EISDIR: "is a folder",
  EACCES: "permission denied (cannot read the file)",
  ELOOP: "too many levels of symbolic links",
};

async function readInput(path: string | URL, what: "picture" | "model"): Promise<Uint8Array> {
  try {
    return new Uint8Array(await readFile(path));
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "";
    const message = `${String(path)}: ${FILE_ERRORS[code] ?? (error as Error).message}`;
    throw what === "model" ? new ModelLoadError(message) : new NotAnImageError(message);
  }
}

/** Decode with sharp as Pillow does for `cifarkit predict`: EXIF orientation applied, 8-bit sRGB + alpha. */
export async function decodeImage(input: NodeImageInput): Promise<RGBAImage> {
  if (isRawPixels(input)) return rawToRGBA(input);
  const label = typeof input === "string" || input instanceof URL ? String(input) : "the picture";
  const bytes = typeof input === "string" || input instanceof URL ? await readInput(input, "picture")
    : input instanceof ArrayBuffer ? new Uint8Array(input) : input;
  if (!(bytes instanceof Uint8Array)) {
    throw new NotAnImageError("expected a file path, encoded image bytes (Buffer/Uint8Array) or raw pixels " +
      "{ data, width, height, channels }");
  }
  if (bytes.length === 0) throw new NotAnImageError(`${label}: empty file`);
  try {
    // the header first: a picture over the limit is refused before its pixels are decoded
    const meta = await sharp(bytes, { limitInputPixels: false }).metadata();
    checkSize(meta.autoOrient?.width ?? meta.width ?? 0, meta.autoOrient?.height ?? meta.height ?? 0, label);
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
    const kind = /unsupported image format/i.test(text) ? "not an image file (or a format sharp cannot read)"
      : `truncated or corrupt image (${text.split("\n")[0]})`;
    throw new NotAnImageError(`${label}: ${kind}`, { cause: error });
  }
}

/** Open a model: a path or file: URL to model.onnx (model.json beside it), or its bytes with `options.info`.
 * No argument: the model that ships with the package. */
export async function loadClassifier(model: string | URL | Uint8Array | ArrayBuffer = DEFAULT_MODEL,
                                     options: LoadOptions = {}): Promise<NodeClassifier> {
  const isPath = typeof model === "string" || model instanceof URL;
  const where = isPath ? String(model) : "the model bytes";
  const bytes = isPath ? await readInput(model, "model") : new Uint8Array(model);
  let info = options.info;
  if (!info) {
    if (!isPath) throw new ModelLoadError("a model given as bytes needs its metadata: loadClassifier(bytes, { info })");
    const jsonPath = String(model instanceof URL ? fileURLToPath(model) : model).replace(/(\.onnx)?$/, ".json");
    const text = new TextDecoder().decode(await readInput(jsonPath, "model"));
    try {
      info = JSON.parse(text) as ModelInfo;
    } catch {
      throw new ModelLoadError(`${jsonPath} is not JSON (it should be the model.json that \`cifarkit export\` wrote)`);
    }
    info = checkModelInfo(info, jsonPath);
  } else {
    info = checkModelInfo(info, "options.info");
  }
  await checkModelBytes(bytes, info, where);
  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(bytes, {
      executionProviders: ["cpu"],
      ...(options.threads ? { intraOpNumThreads: options.threads } : {}),
    });
  } catch (error) {
    throw new ModelLoadError(`${where} is not an ONNX model ONNX Runtime can load (${String(error).split("\n")[0]})`,
                             { cause: error });
  }
  checkSession(session, where);
  return new Classifier<NodeImageInput>({
    session,
    tensor: (pixels, batch) => new ort.Tensor("uint8", pixels, [batch, 32, 32, 3]),
    decode: decodeImage,
    backend: "cpu",
  }, info, options.batchSize ?? DEFAULT_BATCH);
}
