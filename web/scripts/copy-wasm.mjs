// onnxruntime-web fetches its WebAssembly runtime at run time from `ort.env.wasm.wasmPaths` (the page's
// folder): copy those files into the build.
import { copyFileSync, readdirSync } from "node:fs";
import { join } from "node:path";

const source = join("node_modules", "onnxruntime-web", "dist");
let copied = 0;
for (const name of readdirSync(source)) {
  if (/^ort-wasm-simd-threaded(\.jsep)?\.(wasm|mjs)$/.test(name)) {
    copyFileSync(join(source, name), join("dist", name));
    copied++;
  }
}
if (copied === 0) throw new Error(`no ort-wasm files found in ${source}`);
console.log(`copied ${copied} onnxruntime-web runtime files into dist/`);
