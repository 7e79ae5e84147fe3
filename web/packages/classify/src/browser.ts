/**
 * @cifarkit/classify in a browser: onnxruntime-web (WebGPU where the browser has it, else WebAssembly), and
 * the browser's own decoder (EXIF orientation applied).
 *
 *   import { loadClassifier } from "@cifarkit/classify";
 *   const classifier = await loadClassifier("model/model.onnx");
 *   const results = await classifier.classify(fileInput.files[0], { topK: 5 });
 */
import * as ort from "onnxruntime-web";
import {
  checkSize, Classifier, headerSize, isRawPixels, ModelLoadError, NotAnImageError, openClassifier, parseModelInfo, rawToRGBA,
  type LoadOptions, type OrtModule, type RawPixels,
} from "./core.js";
import type { RGBAImage } from "./preprocess.js";

export * from "./core.js";
export { centreSquare, DEFAULT_FIT, FITS, SIZE, toModelPixels, type Fit, type RGBAImage } from "./preprocess.js";

/** A Blob/File, an <img>, a <canvas>, an ImageBitmap, ImageData, a URL, or decoded pixels. */
export type BrowserImageInput = Blob | HTMLImageElement | HTMLCanvasElement | OffscreenCanvas | ImageBitmap |
  ImageData | string | URL | RawPixels;
export type BrowserClassifier = Classifier<BrowserImageInput>;

/** The model that ships with the package, next to this module. (Built from a variable, so that bundlers do
 * not copy the model into every app that imports the library: an app that wants it passes its own URL.) */
const moduleUrl = import.meta.url;
export const DEFAULT_MODEL = new URL("../model/model.onnx", moduleUrl).href;

function pixelsOf(source: CanvasImageSource, width: number, height: number): RGBAImage {
  checkSize(width, height);
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d", { colorSpace: "srgb" }) as OffscreenCanvasRenderingContext2D;
  context.drawImage(source, 0, 0);
  const { data } = context.getImageData(0, 0, width, height, { colorSpace: "srgb" });
  return { width, height, data };
}

async function bitmapOf(blob: Blob, label: string): Promise<RGBAImage> {
  if (blob.size === 0) throw new NotAnImageError(`${label}: empty file`);
  // the header first, as in Node.js: a picture over the limit is refused before the browser decodes it
  const declared = headerSize(new Uint8Array(await blob.slice(0, 1 << 16).arrayBuffer()));
  if (declared) checkSize(declared.width, declared.height, label);
  let bitmap: ImageBitmap;
  try {
    bitmap = await createImageBitmap(blob, { imageOrientation: "from-image" });
  } catch (error) {
    throw new NotAnImageError(`${label}: not an image the browser can read`, { cause: error });
  }
  try {
    return pixelsOf(bitmap, bitmap.width, bitmap.height);
  } finally {
    bitmap.close();
  }
}

export async function decodeImage(input: BrowserImageInput): Promise<RGBAImage> {
  if (isRawPixels(input)) return rawToRGBA(input);
  if (typeof ImageData !== "undefined" && input instanceof ImageData) {
    return { width: input.width, height: input.height, data: input.data };
  }
  if (input instanceof Blob) return bitmapOf(input, input instanceof File ? input.name : "the picture");
  if (typeof input === "string" || input instanceof URL) {
    let response: Response;
    try {
      response = await fetch(input);
    } catch (error) {
      throw new NotAnImageError(`${String(input)}: could not fetch it (${String(error)})`, { cause: error });
    }
    if (!response.ok) throw new NotAnImageError(`${String(input)}: HTTP ${response.status}`);
    return bitmapOf(await response.blob(), String(input));
  }
  if (typeof HTMLImageElement !== "undefined" && input instanceof HTMLImageElement) {
    if (!input.complete) await input.decode();
    return pixelsOf(input, input.naturalWidth, input.naturalHeight);
  }
  if ((typeof HTMLCanvasElement !== "undefined" && input instanceof HTMLCanvasElement) ||
      (typeof OffscreenCanvas !== "undefined" && input instanceof OffscreenCanvas) ||
      (typeof ImageBitmap !== "undefined" && input instanceof ImageBitmap)) {
    return pixelsOf(input, input.width, input.height);
  }
  throw new NotAnImageError("expected a Blob/File, an image, a canvas, an ImageBitmap, ImageData, a URL or raw " +
    "pixels { data, width, height, channels }");
}

async function fetchBytes(url: string): Promise<Uint8Array> {
  let response: Response;
  try {
    response = await fetch(url);
  } catch (error) {
    throw new ModelLoadError(`could not fetch ${url} (${String(error)})`, { cause: error });
  }
  if (!response.ok) throw new ModelLoadError(`could not fetch ${url} (HTTP ${response.status})`);
  return new Uint8Array(await response.arrayBuffer());
}

/** Open a model: the URL of model.onnx (model.json beside it), or its bytes with `options.info`. No argument:
 * the model that ships with the package. */
export async function loadClassifier(model: string | URL | Uint8Array | ArrayBuffer = DEFAULT_MODEL,
                                     options: LoadOptions = {}): Promise<BrowserClassifier> {
  if (typeof WebAssembly !== "object") {
    throw new ModelLoadError("this browser has no WebAssembly, which the in-browser model needs");
  }
  if (options.wasmPaths) ort.env.wasm.wasmPaths = options.wasmPaths;
  ort.env.wasm.numThreads = 1; // no cross-origin isolation needed
  const isUrl = typeof model === "string" || model instanceof URL;
  const url = isUrl ? new URL(String(model), globalThis.document?.baseURI ?? globalThis.location?.href).href : "";
  const where = isUrl ? url : "the model bytes";
  const [bytes, fetchedInfo] = await Promise.all([
    isUrl ? fetchBytes(url) : Promise.resolve(new Uint8Array(model as Uint8Array | ArrayBuffer)),
    options.info || !isUrl ? Promise.resolve(null) : fetchBytes(url.replace(/(\.onnx)?(\?.*)?$/, ".json$2")),
  ]);
  let info: unknown = options.info;
  const infoWhere = info ? "options.info" : `the metadata beside ${where}`;
  if (!info) {
    if (!fetchedInfo) throw new ModelLoadError("a model given as bytes needs its metadata: loadClassifier(bytes, { info })");
    info = parseModelInfo(fetchedInfo, infoWhere);
  }
  const hasGpu = typeof navigator !== "undefined" && "gpu" in navigator;
  return openClassifier<BrowserImageInput>({ bytes, where, info, infoWhere, ort: ort as unknown as OrtModule,
                                             backends: hasGpu ? ["webgpu", "wasm"] : ["wasm"], decode: decodeImage },
                                           options);
}
