// Drive the built page in a real Chromium (Debian's, through playwright-core): upload each picture, report
// what the page shows, check the page survives bad files, and work offline after the first visit.
//
//   node e2e/classify.mjs URL SCREENSHOT.png FILE...     -> one JSON object on stdout
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const [url, screenshot, ...files] = process.argv.slice(2);
if (!url || !screenshot || files.length === 0) {
  console.error("usage: node e2e/classify.mjs URL SCREENSHOT.png FILE...");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const context = await browser.newContext();
const page = await context.newPage();
const consoleErrors = [];
page.on("pageerror", (error) => consoleErrors.push(String(error)));

async function waitReady() {
  await page.waitForFunction(() => ["true", "failed"].includes(document.body.dataset.ready ?? ""), null,
                             { timeout: 120_000 });
  return page.evaluate(() => document.body.dataset.ready);
}

async function upload(file) {
  await page.setInputFiles("#file", file);
  const name = file.split("/").pop();
  await page.waitForFunction((n) => {
    const text = document.getElementById("status")?.textContent ?? "";
    return text.startsWith(n) || text.includes(`${n}:`);
  }, name, { timeout: 60_000 });
  return page.evaluate(() => ({
    top1: document.body.dataset.top1 || null,
    status: document.getElementById("status")?.textContent ?? "",
    error: document.getElementById("status")?.dataset.kind === "error",
    rows: document.querySelectorAll("#results li").length,
    superclass: document.getElementById("superclass")?.textContent || null,
    known: document.body.dataset.known ? document.body.dataset.known === "true" : null,
    outlierScore: document.body.dataset.outlierScore ? Number(document.body.dataset.outlierScore) : null,
    verdict: document.getElementById("verdict")?.textContent || null,
  }));
}

const report = { results: [], offline: null };
try {
  await page.goto(url);
  report.ready = await waitReady();
  report.loadStatus = await page.evaluate(() => document.getElementById("status")?.textContent ?? "");
  await page.waitForTimeout(500); // the sample gallery loads after the model
  report.samples = await page.evaluate(() => document.querySelectorAll("#samples img").length);
  if (report.ready === "true") {
    // The golden preprocessing vectors, through the browser's decoder and the library the page uses.
    const goldenFolder = new URL("../packages/classify/test/golden/", import.meta.url);
    report.golden = {};
    for (const { file, fit = "squash", pixels } of JSON.parse(readFileSync(new URL("golden.json", goldenFolder),
                                                                          "utf8"))) {
      const base64 = readFileSync(new URL(file, goldenFolder)).toString("base64");
      const got = await page.evaluate(async ([data, how]) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        return window.cifarkitPixels(new Blob([bytes], { type: "image/png" }), how);
      }, [base64, fit]);
      report.golden[`${file} (${fit})`] = got.length === pixels.length
        ? Math.max(...got.map((v, i) => Math.abs(v - pixels[i]))) : `length ${got.length}`;
    }
    for (const file of files) report.results.push({ file, ...(await upload(file)) });
    await page.screenshot({ path: screenshot, fullPage: true });
    // Offline: wait for the service worker to have cached this visit, cut the network, reload, classify.
    await page.waitForFunction(() => document.body.dataset.offline === "ready", null, { timeout: 60_000 });
    await context.setOffline(true);
    await page.reload();
    const ready = await waitReady();
    report.offline = { ready, result: ready === "true" ? await upload(files[0]) : null };
  }
  // A model that cannot be fetched gets a clear message.
  await context.setOffline(false);
  const broken = await context.newPage();
  await broken.goto(new URL("?model=./missing/", url).href);
  await broken.waitForFunction(() => document.body.dataset.ready === "failed", null, { timeout: 60_000 });
  report.missingModel = await broken.evaluate(() => document.getElementById("status")?.textContent ?? "");
} finally {
  report.pageErrors = consoleErrors;
  await browser.close();
}
console.log(JSON.stringify(report));
