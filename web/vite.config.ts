import { defineConfig } from "vite";

// onnxruntime-web loads its WebAssembly files at run time; they are copied next to the page
// (see scripts in README) and found through `ort.env.wasm.wasmPaths = "./"`.
export default defineConfig({
  base: "./",
  build: { target: "es2022", outDir: "dist", emptyOutDir: true },
  optimizeDeps: { exclude: ["onnxruntime-web"] },
});
