#!/usr/bin/env node
/**
 * cifarkit-classify [--model model.onnx] [--head head.json] [--top-k K] [--format table|json|csv] [--fit squash|crop]
 *                   FILES_OR_DIRS...
 * cifarkit-classify teach DIR --out head.json [--model model.onnx] [--fit squash|crop]
 *
 * The same output as `cifarkit predict` (JSON field names identical): one error line per file that cannot be
 * classified, the others still classified; exit status 1 if any file failed, 2 for bad arguments.
 */
import { existsSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import {
  CifarkitError, DEFAULT_FIT, displayPath, FITS, loadClassifier, pathBuffer, TeachError, type Classification, type Fit,
  type TaughtClassifier,
} from "./node.js";

// what sharp decodes (BMP, PPM and PGM, which `cifarkit predict` reads through Pillow, sharp cannot: they are
// not listed from folders; named one by one, each gets its one-line error)
const IMAGE_SUFFIXES = new Set([".png", ".jpg", ".jpeg", ".gif", ".webp", ".tif", ".tiff"]);
const USAGE = "usage: cifarkit-classify [--model model.onnx] [--head head.json] [--top-k K] " +
  "[--format table|json|csv] [--fit squash|crop] FILES_OR_DIRS...\n" +
  "       cifarkit-classify teach DIR --out head.json [--model model.onnx] [--fit squash|crop]";
const BATCH = 64; // pictures decoded and classified at a time: results stream out batch by batch

interface Result {
  path: string;
  error: string | null;
  superclass: string | null;
  top: Classification[];
  known: boolean | null;
  outlierScore: number | null;
}

/** A file to classify: its name as raw bytes (file names need not be UTF-8) and as shown. */
interface Entry {
  name: Buffer;
  shown: string;
  error: string | null;
}

const join = (folder: Buffer, name: Buffer) => Buffer.concat([folder, Buffer.from("/"), name]);

/** An argument as a path. Node decodes arguments as UTF-8, turning bytes that are not into U+FFFD; such a name
 * is found again among its folder's entries (read as bytes) by comparing their decoded forms. */
function argumentPath(argument: string): Buffer {
  if (!argument.includes("\uFFFD") || existsSync(argument)) return Buffer.from(argument);
  const slash = argument.lastIndexOf("/");
  const folder = slash >= 0 ? argument.slice(0, slash) || "/" : ".";
  try {
    const match = readdirSync(folder, { encoding: "buffer" }).find((n) => n.toString() === argument.slice(slash + 1));
    if (match) return slash >= 0 ? join(Buffer.from(folder === "/" ? "" : folder), match) : match;
  } catch { /* reported when it is read */ }
  return Buffer.from(argument);
}

/** Files as given, and the picture files under folders (recursively, sorted by their bytes), as `cifarkit
 * predict` does: with a stack of its own (no recursion to overflow on a deep tree), not following links. */
function expand(argumentsGiven: string[]): Entry[] {
  const out: Entry[] = [];
  for (const argument of argumentsGiven) {
    const root = argumentPath(argument);
    let isDir = false;
    try {
      isDir = statSync(root).isDirectory();
    } catch {
      /* a missing file is reported when it is read */
    }
    if (!isDir) {
      out.push({ name: root, shown: displayPath(root), error: null });
      continue;
    }
    const found: Entry[] = [];
    const pending = [root];
    while (pending.length) {
      const folder = pending.pop()!;
      let entries;
      try {
        entries = readdirSync(folder, { withFileTypes: true, encoding: "buffer" });
      } catch (error) {
        found.push({ name: folder, shown: displayPath(folder),
                     error: `cannot read this folder (${(error as Error).message})` });
        continue;
      }
      for (const entry of entries) {
        const full = join(folder, entry.name as unknown as Buffer);
        const text = (entry.name as unknown as Buffer).toString("latin1");
        if (entry.isDirectory()) pending.push(full);
        else if (IMAGE_SUFFIXES.has(text.slice(text.lastIndexOf(".")).toLowerCase())) {
          found.push({ name: full, shown: displayPath(full), error: null });
        }
      }
    }
    out.push(...found.sort((a, b) => Buffer.compare(a.name, b.name)));
  }
  return out;
}

/** What Python's str.isprintable() calls unprintable (control and format characters such as U+202E, line and
 * paragraph separators, spaces other than " ", private-use and unassigned code points), escaped as Python's
 * unicode_escape writes them: a newline in a name cannot forge a line, a terminal escape sequence or a
 * right-to-left override is shown, not obeyed -- the same text `cifarkit predict` prints. */
const UNPRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}]|(?! )\p{Zs}/gu;

export function printable(text: string): string {
  return text.replace(UNPRINTABLE, (c) => {
    const named: Record<string, string> = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };
    const code = c.codePointAt(0)!;
    return named[c] ?? (code < 0x100 ? `\\x${code.toString(16).padStart(2, "0")}`
      : code < 0x10000 ? `\\u${code.toString(16).padStart(4, "0")}` : `\\U${code.toString(16).padStart(8, "0")}`);
  });
}

/** A CSV cell: quoted when needed, and a leading = + - @ (tab, carriage return) neutralised so that a
 * spreadsheet never runs it as a formula. */
function csvCell(value: string, neutralise = true): string {
  const safe = neutralise && /^[=+\-@\t\r]/.test(value) ? `'${value}` : value;
  return /[",\r\n]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}

/** Output lines, a result at a time, identical to `cifarkit predict`'s for each format. */
class Printer {
  private held: string | null = null;

  constructor(private readonly style: string, private readonly classes: number) {
    if (style === "json") console.log("[");
    if (style === "csv") console.log("path,rank,class,probability,superclass,error,known,outlier_score");
  }

  print(r: Result): void {
    if (this.style === "json") {
      const text = JSON.stringify({ path: r.path, error: r.error, superclass: r.superclass,
        top: r.top.map((c) => ({ class: c.label, probability: c.score })), known: r.known,
        outlier_score: r.outlierScore }, null, 2)
        .split("\n").map((line) => `  ${line}`).join("\n");
      if (this.held !== null) console.log(`${this.held},`);
      this.held = text;
    } else if (this.style === "csv") {
      if (r.error) console.log([r.path, "", "", "", "", r.error, "", ""].map((v) => csvCell(v)).join(","));
      const known = r.known === null ? "" : String(r.known);
      const score = r.outlierScore === null ? "" : r.outlierScore.toFixed(6);
      r.top.forEach((c, i) => console.log([csvCell(r.path), String(i + 1), csvCell(c.label), c.score.toFixed(6),
                                           csvCell(r.superclass ?? ""), "", known, score].join(",")));
    } else if (r.error) {
      console.log(`${printable(r.path)}: ERROR ${printable(r.error)}`);
    } else {
      const top = r.top.map((c) => `${printable(c.label)} ${(c.score * 100).toFixed(1)}%`).join(", ");
      // an honest answer: the picture does not look like any class the model knows
      console.log(r.known === false ? `${printable(r.path)}: none of the ${this.classes} classes (closest: ${top})`
        : `${printable(r.path)}: ${top}` + (r.superclass ? `  [superclass: ${printable(r.superclass)}]` : ""));
    }
  }

  close(): void {
    if (this.style !== "json") return;
    if (this.held !== null) console.log(this.held);
    console.log("]");
  }
}

/** `teach DIR --out head.json`: one sub-folder of pictures per class (ImageFolder), in the order `cifarkit teach`
 * reads them (class folders, then their files, sorted by name); a file that is not a picture is skipped with a
 * line, a class left without pictures is an error. Prints what `cifarkit teach` prints. */
async function teachCommand(argv: string[]): Promise<number> {
  let values, positionals;
  try {
    ({ values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: {
      model: { type: "string" }, out: { type: "string" }, fit: { type: "string", default: DEFAULT_FIT } } }));
  } catch (error) {
    console.error(`cifarkit-classify teach: error: ${(error as Error).message}\n${USAGE}`);
    return 2;
  }
  if (positionals.length !== 1 || !values.out || !Object.hasOwn(FITS, values.fit!)) {
    console.error(`cifarkit-classify teach: error: give one folder and --out head.json\n${USAGE}`);
    return 2;
  }
  if (!values.out.endsWith(".json")) throw new TeachError(`${values.out}: the head file should end in .json`);
  const started = performance.now();
  const root = positionals[0]!;
  if (!existsSync(root) || !statSync(root).isDirectory()) {
    throw new TeachError(`${root} is not a folder; give a folder with one sub-folder of pictures per class`);
  }
  const visible = (names: string[]) => names.filter((n) => !n.startsWith(".")).sort(
    (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  const classes = visible(readdirSync(root)).filter((n) => statSync(`${root}/${n}`).isDirectory());
  if (classes.length < 2) {
    throw new TeachError(`${root} has ${classes.length} class folder(s); teaching needs at least 2 (one sub-folder ` +
                         "of pictures per class)");
  }
  const classifier = await loadClassifier(values.model);
  const examples: { label: string; image: string }[] = [];
  for (const label of classes) {
    const folder = `${root}/${label}`;
    const files = visible(readdirSync(folder)).filter((n) => statSync(`${folder}/${n}`).isFile());
    if (!files.length) throw new TeachError(`class "${label}" (${folder}) has no pictures; add some or remove the folder`);
    let usable = 0;
    for (const name of files) {
      try {
        await classifier.pixels(`${folder}/${name}`);  // decodable? (read again by teach)
        examples.push({ label, image: `${folder}/${name}` });
        usable += 1;
      } catch (error) {
        if (!(error instanceof CifarkitError)) throw error;
        console.log(`skipped ${printable(error.message)}`);
      }
    }
    if (!usable) throw new TeachError(`class "${label}" has no picture that could be read; add some or remove its folder`);
  }
  const taught = await classifier.teach(examples, { fit: values.fit as Fit });
  const head = taught.toJSON();
  const staged = `${values.out}.partial-${process.pid}`;
  writeFileSync(staged, `${JSON.stringify(head, null, 2)}\n`);
  renameSync(staged, values.out);  // whole or not at all
  const counts = Object.entries(head.examples).map(([name, n]) => `${printable(name)} ${n}`).join(", ");
  const verdict = head.held_out
    ? `held-out accuracy ${(head.held_out.accuracy * 100).toFixed(1)}% on ${head.held_out.images} pictures`
    : "no held-out check (fewer than 5 pictures in some class)";
  const name = classifier.info.source_checkpoint ?? classifier.info.model;
  console.log(`taught ${head.labels.length} classes (${counts}) with ${head.method} on ${name}'s features: ` +
              `${verdict}; ${((performance.now() - started) / 1000).toFixed(1)}s | wrote ${values.out}`);
  return 0;
}

async function main(argv: string[]): Promise<number> {
  if (argv[0] === "teach") return teachCommand(argv.slice(1));
  let values, positionals;
  try {
    ({ values, positionals } = parseArgs({
      args: argv, allowPositionals: true,
      options: { model: { type: "string" }, head: { type: "string" },
                 "top-k": { type: "string", short: "k", default: "5" },
                 fit: { type: "string", default: DEFAULT_FIT },
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
  if (!Object.hasOwn(FITS, values.fit!)) {
    console.error(`cifarkit-classify: error: --fit must be ${Object.keys(FITS).join(" or ")}, got ${values.fit}`);
    return 2;
  }
  const fit = values.fit as Fit;
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
  let taught: TaughtClassifier<unknown> | null = null;
  if (values.head) {
    let head: unknown;
    try {
      head = JSON.parse(readFileSync(values.head, "utf8"));
    } catch (error) {
      throw new TeachError(`${values.head} is not a readable head file (${(error as Error).message.split("\n")[0]})`);
    }
    taught = classifier.withHead(head) as TaughtClassifier<unknown>;
  }
  const files = expand(positionals);
  if (files.length === 0) {
    console.error("cifarkit-classify: error: no image files found in the given folders");
    return 1;
  }
  const printer = new Printer(values.format!, (taught ?? classifier).labels.length);
  let failed = 0;
  for (let start = 0; start < files.length; start += BATCH) {
    const results: Result[] = [];
    const ready: { result: Result; pixels: Uint8Array }[] = [];
    for (const { name, shown, error } of files.slice(start, start + BATCH)) {
      const result: Result = { path: shown, error, superclass: null, top: [], known: null, outlierScore: null };
      results.push(result);
      if (error) continue;
      try {
        ready.push({ result, pixels: await classifier.pixels(pathBuffer(name), fit) });
      } catch (err) {
        if (!(err instanceof CifarkitError)) throw err;
        result.error = err.message.startsWith(`${shown}: `) ? err.message.slice(shown.length + 2) : err.message;
      }
    }
    const assessed = taught
      ? (await taught.classifyPixels(ready.map((r) => r.pixels), { topK }))
        .map((ranked) => ({ ranked, known: null, outlierScore: null }))
      : await classifier.assessPixels(ready.map((r) => r.pixels), { topK });
    ready.forEach(({ result }, i) => {
      const { ranked, known, outlierScore } = assessed[i]!;
      result.top = ranked;
      result.superclass = ranked[0]?.superclass ?? null;
      result.known = known;
      result.outlierScore = outlierScore;
    });
    for (const result of results) {
      if (result.error) failed += 1;
      printer.print(result);
    }
  }
  printer.close();
  if (failed) console.error(`cifarkit-classify: ${failed} of ${files.length} files could not be classified`);
  await classifier.dispose();
  return failed ? 1 : 0;
}

// A reader that went away (`cifarkit-classify ... | head -1`) ends the output quietly, as command-line tools do;
// a full disk or another write error is one line, not a stack.
process.stdout.on("error", (error: NodeJS.ErrnoException) => {
  if (error.code === "EPIPE") process.exit(141);
  console.error(`cifarkit-classify: error: cannot write the output (${error.code ?? error.message}); free some ` +
    "space (or write elsewhere) and run the command again");
  process.exit(1);
});

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (error: unknown) => {
  console.error(`cifarkit-classify: error: ${error instanceof CifarkitError ? error.message : String(error)}`);
  process.exitCode = 1;
});
