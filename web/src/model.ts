/** Loading an exported cifarkit model (model.onnx + model.json) and running it with onnxruntime-web. */
import * as ort from "onnxruntime-web";
import { SIZE } from "./preprocess";

export interface ModelInfo {
  format: string;
  model: string;
  dataset: string;
  classes: string[];
  superclasses: string[] | null;
  fine_to_coarse: number[] | null;
  val?: { top1?: number } | null;
  test?: { top1?: number } | null;
}

export interface Ranked {
  index: number;
  name: string;
  probability: number;
}

export interface Classification {
  top: Ranked[];
  superclass: string | null;
}

export class ModelLoadError extends Error {}

export class Classifier {
  private constructor(
    private readonly session: ort.InferenceSession,
    readonly info: ModelInfo,
    readonly backend: string,
  ) {}

  /** Fetch model.json and model.onnx from `base` (a URL prefix) and open a session: WebGPU where the
   * browser has it, WebAssembly otherwise. */
  static async load(base: string): Promise<Classifier> {
    if (typeof WebAssembly !== "object") {
      throw new ModelLoadError("This browser has no WebAssembly, which the in-browser model needs.");
    }
    ort.env.wasm.wasmPaths = new URL("./", document.baseURI).href;
    ort.env.wasm.numThreads = 1; // no cross-origin isolation needed
    let info: ModelInfo;
    let bytes: ArrayBuffer;
    try {
      const [infoResponse, modelResponse] = await Promise.all([fetch(`${base}model.json`), fetch(`${base}model.onnx`)]);
      if (!infoResponse.ok || !modelResponse.ok) {
        throw new Error(`HTTP ${infoResponse.ok ? modelResponse.status : infoResponse.status}`);
      }
      info = (await infoResponse.json()) as ModelInfo;
      bytes = await modelResponse.arrayBuffer();
    } catch (error) {
      throw new ModelLoadError(`Could not fetch the model from ${base} (${String(error)}).`);
    }
    if (info.format !== "cifarkit-onnx" || !Array.isArray(info.classes)) {
      throw new ModelLoadError("model.json is not a cifarkit export (run `cifarkit export CHECKPOINT --onnx model.onnx`).");
    }
    const hasGpu = typeof navigator !== "undefined" && "gpu" in navigator;
    for (const backend of hasGpu ? ["webgpu", "wasm"] : ["wasm"]) {
      try {
        const session = await ort.InferenceSession.create(bytes, { executionProviders: [backend] });
        return new Classifier(session, info, backend);
      } catch (error) {
        if (backend === "wasm") throw new ModelLoadError(`The model failed to load: ${String(error)}`);
      }
    }
    throw new ModelLoadError("No backend could run the model.");
  }

  async classify(pixels: Uint8Array, k = 5): Promise<Classification> {
    const input = new ort.Tensor("uint8", pixels, [1, SIZE, SIZE, 3]);
    const output = await this.session.run({ pixels: input });
    const probabilities = output["probabilities"]!.data as Float32Array;
    const ranked = Array.from(probabilities, (probability, index) => ({
      index,
      name: this.info.classes[index] ?? String(index),
      probability,
    })).sort((a, b) => b.probability - a.probability);
    const best = ranked[0]!;
    const coarse = this.info.fine_to_coarse?.[best.index];
    const superclass = coarse !== undefined && this.info.superclasses ? (this.info.superclasses[coarse] ?? null) : null;
    return { top: ranked.slice(0, k), superclass };
  }
}
