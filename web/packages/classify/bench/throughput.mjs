// images/s of classify() in Node.js, for benchmarks/typescript_throughput.py (which runs the Python side beside
// it on the same model and pictures):  node bench/throughput.mjs PIXELS.bin PNG_FOLDER BATCH REPEATS
// PIXELS.bin: N x 32 x 32 x 3 uint8 test images. Prints one JSON object.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { loadClassifier } from "../dist/node.js";

const [pixelsFile, pngFolder, batchText = "256", repeatText = "5"] = process.argv.slice(2);
const batch = Number(batchText);
const repeats = Number(repeatText);
const classifier = await loadClassifier(undefined, { batchSize: batch });
const flat = readFileSync(pixelsFile);
const size = 32 * 32 * 3;
const pixels = Array.from({ length: flat.length / size }, (_, i) => new Uint8Array(flat.buffer, flat.byteOffset + i * size, size));
const pngs = readdirSync(pngFolder).sort().map((name) => readFileSync(join(pngFolder, name)));

async function median(fn) {
  await fn(); // warm-up
  const times = [];
  for (let i = 0; i < repeats; i++) {
    const started = performance.now();
    await fn();
    times.push((performance.now() - started) / 1000);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

const pixelsSeconds = await median(() => classifier.classifyPixels(pixels, { topK: 5 }));
const encodedSeconds = await median(async () => {
  for (let start = 0; start < pngs.length; start += batch) await classifier.classify(pngs.slice(start, start + batch));
});
console.log(JSON.stringify({
  node: process.version, images: pixels.length, pngs: pngs.length, batch, repeats,
  pixels_per_second: pixels.length / pixelsSeconds, png_per_second: pngs.length / encodedSeconds,
}));
