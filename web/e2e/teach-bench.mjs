// Fit a head in a real Chromium (Debian's, through playwright-core) from features written by
// benchmarks/teach_cifar10.py: @cifarkit/classify's own teach.js runs in the page; the features arrive as
// float32 bytes. Prints { seconds, predicted } as JSON.
//
//   node e2e/teach-bench.mjs FOLDER        (FOLDER: train.f32, test.f32, meta.json {labels, d})
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [folder] = process.argv.slice(2);
const dist = new URL("../packages/classify/dist/", import.meta.url);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
const page = await browser.newPage();
await page.route("http://cifarkit.test/**", (route) => {
  const name = new URL(route.request().url()).pathname.slice(1);
  if (name === "") return route.fulfill({ contentType: "text/html", body: "<!doctype html><title>teach</title>" });
  const body = name.endsWith(".js") ? readFileSync(new URL(name, dist)) : readFileSync(join(folder, name));
  return route.fulfill({ body, contentType: name.endsWith(".js") ? "text/javascript" : "application/octet-stream" });
});
await page.goto("http://cifarkit.test/");
const result = await page.evaluate(async () => {
  const { fitHead, headProbabilities } = await import("/teach.js");
  const meta = await (await fetch("/meta.json")).json();
  const rows = async (name) => {
    const flat = new Float32Array(await (await fetch(`/${name}`)).arrayBuffer());
    return Array.from({ length: flat.length / meta.d }, (_, i) => flat.subarray(i * meta.d, (i + 1) * meta.d));
  };
  const train = await rows("train.f32"), test = await rows("test.f32");
  const start = performance.now();
  const head = fitHead(train, meta.labels, "ab".repeat(32));
  const seconds = (performance.now() - start) / 1000;
  const predicted = test.map((row) => {
    const p = headProbabilities(head, row);
    let best = 0;
    for (let i = 1; i < p.length; i++) if (p[i] > p[best]) best = i;
    return head.labels[best];
  });
  return { seconds, predicted };
});
await browser.close();
console.log(JSON.stringify(result));
