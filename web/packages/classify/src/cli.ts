#!/usr/bin/env node
/**
 * cifarkit-classify [--model model.onnx] [--top-k K] [--format table|json|csv] FILES_OR_DIRS...
 *
 * The same output as `cifarkit predict` (JSON field names identical): one error line per file that cannot be
 * classified, the others still classified; exit status 1 if any file failed, 2 for bad arguments.
 */
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { CifarkitError, loadClassifier, type Classification } from "./node.js";

const IMAGE_SUFFIXES = new Set([".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"]);
const USAGE = "usage: cifarkit-classify [--model model.onnx] [--top-k K] [--format table|json|csv] FILES_OR_DIRS...";

interface Result {
  path: string;
  error: string | null;
  superclass: string | null;
  top: Classification[];
}

/** Files as given, and the picture files under folders (recursively, sorted), as `cifarkit predict` does. */
function expand(paths: string[]): { path: string; error: string | null }[] {
  const out: { path: string; error: string | null }[] = [];
  for (const path of paths) {
    let isDir = false;
    try {
      isDir = statSync(path).isDirectory();
    } catch {
      /* a missing file is reported when it is read */
    }
    if (!isDir) {
      out.push({ path, error: null });
      continue;
    }
    const found: { path: string; error: string | null }[] = [];
    const walk = (folder: string) => {
      let entries;
      try {
        entries = readdirSync(folder, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1));
      } catch (error) {
        found.push({ path: folder, error: `${folder}: cannot read this folder (${(error as Error).message})` });
        return;
      }
      for (const entry of entries) {
        const full = join(folder, entry.name);
        if (entry.isDirectory()) walk(full);
        else if (IMAGE_SUFFIXES.has(entry.name.slice(entry.name.lastIndexOf(".")).toLowerCase())) {
          found.push({ path: full, error: null });
        }
      }
    };
    walk(path);
    out.push(...found.sort((a, b) => (Buffer.from(a.path) < Buffer.from(b.path) ? -1 : 1)));
  }
  return out;
}

function csvCell(value: string): string {
  return /[",\r\n]/.test(value) ? `"${value.replace(/"/g, '""')}"` : value;
}

function format(results: Result[], style: string): string {
  if (style === "json") {
    return JSON.stringify(results.map((r) => ({
      path: r.path, error: r.error, superclass: r.superclass,
      top: r.top.map((c) => ({ class: c.label, probability: c.score })),
    })), null, 2);
  }
  if (style === "csv") {
    const lines = ["path,rank,class,probability,superclass,error"];
    for (const r of results) {
      if (r.error) lines.push([r.path, "", "", "", "", r.error].map(csvCell).join(","));
      r.top.forEach((c, i) => lines.push([r.path, String(i + 1), c.label, c.score.toFixed(6), r.superclass ?? "", ""]
        .map(csvCell).join(",")));
    }
    return lines.join("\n");
  }
  return results.map((r) => r.error ? `${r.path}: ERROR ${r.error}`
    : `${r.path}: ${r.top.map((c) => `${c.label} ${(c.score * 100).toFixed(1)}%`).join(", ")}` +
      (r.superclass ? `  [superclass: ${r.superclass}]` : "")).join("\n");
}

async function main(argv: string[]): Promise<number> {
  let values, positionals;
  try {
    ({ values, positionals } = parseArgs({
      args: argv, allowPositionals: true,
      options: { model: { type: "string" }, "top-k": { type: "string", short: "k", default: "5" },
                 format: { type: "string", default: "table" }, help: { type: "boolean", short: "h" } },
    }));
  } catch (error) {
    console.error(`cifarkit-classify: error: ${(error as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const topK = Number(values["top-k"]);
  if (!Number.isInteger(topK) || topK < 1) {
    console.error(`cifarkit-classify: error: --top-k expects a whole number >= 1, got ${values["top-k"]}`);
    return 2;
  }
  if (!["table", "json", "csv"].includes(values.format!)) {
    console.error(`cifarkit-classify: error: --format must be table, json or csv, got ${values.format}`);
    return 2;
  }
  if (positionals.length === 0) {
    console.error(`cifarkit-classify: error: give at least one picture or folder\n${USAGE}`);
    return 2;
  }
  const classifier = await loadClassifier(values.model);
  const files = expand(positionals);
  if (files.length === 0) {
    console.error("cifarkit-classify: error: no image files found in the given folders");
    return 1;
  }
  const results: Result[] = [];
  const ready: { result: Result; pixels: Uint8Array }[] = [];
  for (const { path, error } of files) {
    const result: Result = { path, error, superclass: null, top: [] };
    results.push(result);
    if (error) continue;
    try {
      ready.push({ result, pixels: await classifier.pixels(path) });
    } catch (err) {
      if (!(err instanceof CifarkitError)) throw err;
      result.error = err.message.startsWith(`${path}: `) ? err.message.slice(path.length + 2) : err.message;
    }
  }
  const ranked = await classifier.classifyPixels(ready.map((r) => r.pixels), { topK });
  ready.forEach(({ result }, i) => {
    result.top = ranked[i]!;
    result.superclass = result.top[0]?.superclass ?? null;
  });
  console.log(format(results, values.format!));
  const failed = results.filter((r) => r.error).length;
  if (failed) console.error(`cifarkit-classify: ${failed} of ${results.length} files could not be classified`);
  await classifier.dispose();
  return failed ? 1 : 0;
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (error: unknown) => {
  console.error(`cifarkit-classify: error: ${error instanceof CifarkitError ? error.message : String(error)}`);
  process.exitCode = 1;
});
