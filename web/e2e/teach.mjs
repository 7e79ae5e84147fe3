// Drive the page's Teach mode in a real Chromium (Debian's, through playwright-core): name two classes, give one
// its pictures with the file chooser and drop the other's onto its row, teach, classify pictures with the taught classes, download the head, reload the page, load the
// head again and classify again.
//
//   node e2e/teach.mjs URL CLASS_DIR_A CLASS_DIR_B HEAD_OUT.json FILE...   -> one JSON object on stdout
import { readdirSync, readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { chromium } from "playwright-core";

const [url, dirA, dirB, headOut, ...files] = process.argv.slice(2);
if (!url || !dirA || !dirB || !headOut || files.length === 0) {
  console.error("usage: node e2e/teach.mjs URL CLASS_DIR_A CLASS_DIR_B HEAD_OUT.json FILE...");
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
const context = await browser.newContext({ acceptDownloads: true });
const page = await context.newPage();
const pageErrors = [];
page.on("pageerror", (error) => pageErrors.push(String(error)));

const ready = () => page.waitForFunction(() => document.body.dataset.ready === "true", null, { timeout: 120_000 });
async function classifyAll() {
  const out = [];
  for (const file of files) {
    await page.setInputFiles("#file", file);
    const name = basename(file);
    await page.waitForFunction((n) => (document.getElementById("status")?.textContent ?? "").startsWith(n), name,
                               { timeout: 60_000 });
    out.push({ file, top1: await page.evaluate(() => document.body.dataset.top1 || null) });
  }
  return out;
}

const report = { pageErrors };
try {
  await page.goto(url);
  await ready();
  const rows = await page.$$(".teach-row");
  for (const [i, dir] of [dirA, dirB].entries()) {
    await rows[i].$(".teach-name").then((input) => input.fill(basename(dir)));
    const pictures = readdirSync(dir).sort().map((name) => join(dir, name));
    if (i === 0) {  // the first class picked with the file chooser...
      await rows[i].$(".teach-files").then((input) => input.setInputFiles(pictures));
      continue;
    }
    // ...the second dropped onto its row, as files dragged from the desktop arrive
    const files = pictures.map((path) => ({ name: basename(path), bytes: [...readFileSync(path)] }));
    const dataTransfer = await page.evaluateHandle((list) => {
      const transfer = new DataTransfer();
      for (const { name, bytes } of list) transfer.items.add(new File([new Uint8Array(bytes)], name, { type: "image/png" }));
      return transfer;
    }, files);
    await rows[i].dispatchEvent("drop", { dataTransfer });
  }
  report.counts = await page.$$eval(".teach-count", (spans) => spans.map((s) => s.textContent));
  await page.click("#teach-train");
  await page.waitForFunction(() => (document.getElementById("teach-status")?.textContent ?? "").startsWith("Taught") ||
                             document.getElementById("teach-status")?.dataset.kind === "error", null,
                             { timeout: 120_000 });
  report.status = await page.evaluate(() => document.getElementById("teach-status")?.textContent ?? "");
  report.taught = await page.evaluate(() => document.body.dataset.taught ?? "");
  report.results = await classifyAll();
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#teach-download")]);
  await download.saveAs(headOut);
  await page.reload();
  await ready();
  await page.setInputFiles("#teach-load", headOut);
  await page.waitForFunction(() => (document.getElementById("teach-status")?.textContent ?? "").startsWith("Loaded"),
                             null, { timeout: 60_000 });
  report.reloaded = await classifyAll();
  await page.click("#teach-forget");
  report.forgotten = await classifyAll();
} catch (error) {
  report.error = String(error);
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
