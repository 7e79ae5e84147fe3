/** The page: pick, drop, paste or photograph a picture (or click a sample); see the 32x32 the model sees
 * and its top-5 classes. Everything runs in the browser. */
import {
  decodeImage, loadClassifier, ModelLoadError, SIZE, toModelPixels, type Assessment, type BrowserClassifier,
  type Fit,
} from "@cifarkit/classify";
import "./style.css";
import { setUpTeaching } from "./teach-ui.js";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const status = $<HTMLParagraphElement>("status");
const results = $<HTMLOListElement>("results");
const superclass = $<HTMLParagraphElement>("superclass");
const verdict = $<HTMLParagraphElement>("verdict");
const preview = $<HTMLCanvasElement>("preview");
const original = $<HTMLImageElement>("original");
const fileInput = $<HTMLInputElement>("file");
const drop = $<HTMLElement>("drop");

// The model's location: ?model=URL-prefix (ending in /), else the folder the page is served with.
const modelBase = new URLSearchParams(location.search).get("model") ?? "./model/";
let classifier: BrowserClassifier | null = null;

function say(text: string, kind: "info" | "error" = "info") {
  status.textContent = text;
  status.dataset.kind = kind;
}

function showPreview(pixels: Uint8Array) {
  const rgba = new Uint8ClampedArray(SIZE * SIZE * 4);
  for (let i = 0; i < SIZE * SIZE; i++) {
    rgba.set([pixels[i * 3]!, pixels[i * 3 + 1]!, pixels[i * 3 + 2]!, 255], i * 4);
  }
  preview.getContext("2d")!.putImageData(new ImageData(rgba, SIZE, SIZE), 0, 0);
}

function showResults({ ranked: top, known, outlierScore }: Assessment) {
  // an honest answer: a picture that looks like none of the classes says so, and shows the closest ones
  verdict.textContent = known === false
    ? `None of the ${classifier?.labels.length ?? ""} classes this model knows. The closest ones:` : "";
  document.body.dataset.known = known === null ? "" : String(known);
  document.body.dataset.outlierScore = outlierScore === null ? "" : String(outlierScore);
  results.replaceChildren(
    ...top.map(({ label: name, score: probability }) => {
      const item = document.createElement("li");
      const label = document.createElement("span");
      label.className = "name";
      label.textContent = name;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.setProperty("--p", String(probability));
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = `${(probability * 100).toFixed(1)}%`;
      item.append(label, bar, value);
      return item;
    }),
  );
  superclass.textContent = top[0]?.superclass && known !== false ? `superclass: ${top[0].superclass}` : "";
  document.body.dataset.top1 = top[0]?.label ?? "";
}

/** Show the picture as given; the previous picture's object URL is released (each one pins its Blob). */
function showOriginal(blob: Blob) {
  if (original.src.startsWith("blob:")) URL.revokeObjectURL(original.src);
  original.src = URL.createObjectURL(blob);
}

// "Keep the picture's shape": its centre square instead of the whole picture squashed (--fit crop)
const cropToggle = $<HTMLInputElement>("fit-crop");
const fit = (): Fit => (cropToggle.checked ? "crop" : "squash");
let last: { blob: Blob; label: string } | null = null;
cropToggle.addEventListener("change", () => {
  if (last) void classify(last.blob, last.label);
});
// Teach mode: a taught head, once there is one, sorts the pictures into its classes
const teaching = setUpTeaching(() => classifier, fit, () => {
  if (last) void classify(last.blob, last.label);
});

async function classify(blob: Blob, label: string) {
  last = { blob, label };
  if (!classifier) return say("The model is not loaded yet.", "error");
  say(`Classifying ${label}…`);
  try {
    const image = await decodeImage(blob);
    showOriginal(blob);
    const pixels = toModelPixels(image, fit());
    showPreview(pixels);
    const taught = teaching.current();
    showResults(taught ? { ranked: (await taught.classifyPixels([pixels]))[0]!, known: null, outlierScore: null }
                       : (await classifier.assessPixels([pixels]))[0]!);
    say(`${label}: ${image.width}×${image.height} → 32×32`);
  } catch (error) {
    results.replaceChildren();
    superclass.textContent = "";
    verdict.textContent = "";
    document.body.dataset.top1 = "";
    const message = error instanceof Error ? error.message : String(error);
    // the library's messages start with the picture's name already: name it once
    say(message.startsWith(`${label}: `) ? message : `${label}: ${message}`, "error");
  }
}

fileInput.addEventListener("change", () => {
  const file = fileInput.files?.[0];
  if (file) void classify(file, file.name);
  fileInput.value = "";
});
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const file = event.dataTransfer?.files[0];
  if (file) void classify(file, file.name);
});
window.addEventListener("paste", (event) => {
  const file = Array.from(event.clipboardData?.files ?? [])[0];
  if (file) void classify(file, "pasted image");
});

async function loadSamples() {
  const gallery = $<HTMLDivElement>("samples");
  try {
    const response = await fetch(`${modelBase}samples/index.json`);
    if (!response.ok) return;
    const samples = (await response.json()) as { file: string; label: string }[];
    $<HTMLHeadingElement>("samples-title").hidden = samples.length === 0;
    gallery.replaceChildren(
      ...samples.map(({ file, label }) => {
        const button = document.createElement("button");
        const img = document.createElement("img");
        img.src = `${modelBase}samples/${file}`;
        img.alt = label;
        button.title = `test image: ${label}`;
        button.append(img);
        button.addEventListener("click", async () => classify(await (await fetch(img.src)).blob(), `sample (${label})`));
        return button;
      }),
    );
  } catch {
    /* samples are optional */
  }
}

/** Offline after the first visit: once the service worker runs, it caches everything this visit loaded
 * (page, runtime, model, samples) and says when it is done. */
async function enableOffline() {
  if (!("serviceWorker" in navigator)) return;
  try {
    await navigator.serviceWorker.register("./sw.js");
    const registration = await navigator.serviceWorker.ready;
    const urls = [location.href, ...performance.getEntriesByType("resource").map((entry) => entry.name)]
      .filter((url) => url.startsWith(location.origin));
    const channel = new MessageChannel();
    const answer = new Promise<unknown>((resolve) => (channel.port1.onmessage = (event) => resolve(event.data)));
    registration.active?.postMessage({ type: "cache-urls", urls }, [channel.port2]);
    if ((await answer) === "done") document.body.dataset.offline = "ready";
  } catch {
    /* offline use is a bonus; the page works without it */
  }
}

/** The model's classes, by superclass where it has them (names are set as text, never as markup). */
function showClassList(classes: string[], superclasses: string[] | null, toCoarse: number[] | null) {
  const list = $<HTMLUListElement>("classes");
  const groups = new Map<string, string[]>();
  classes.forEach((name, i) => {
    const group = superclasses && toCoarse ? superclasses[toCoarse[i]!] ?? "" : "";
    groups.set(group, [...(groups.get(group) ?? []), name]);
  });
  list.replaceChildren(...[...groups].map(([group, names]) => {
    const item = document.createElement("li");
    item.textContent = group ? `${group}: ${names.join(", ")}` : names.join(", ");
    return item;
  }));
}

async function start() {
  say("Loading the model…");
  try {
    const base = new URL(modelBase, document.baseURI);
    classifier = await loadClassifier(new URL("model.onnx", base).href, { wasmPaths: new URL("./", document.baseURI).href });
    const { info } = classifier;
    const accuracy = info.test?.top1 ?? info.val?.top1;
    say(
      `Ready: ${info.model} on ${info.dataset}, ${info.classes.length} classes` +
        (accuracy !== undefined ? `, ${(accuracy * 100).toFixed(1)}% ${info.test ? "test" : "validation"} top-1` : "") +
        ` (${classifier.backend}). Choose a picture.`,
    );
    showClassList(info.classes, info.superclasses, info.fine_to_coarse);
    document.body.dataset.ready = "true";
  } catch (error) {
    say(error instanceof ModelLoadError ? error.message : `Could not start: ${String(error)}`, "error");
    document.body.dataset.ready = "failed";
  }
  await loadSamples();
  await enableOffline();
}

// For the end-to-end test: the pixels the page makes of a picture (checked against the golden vectors).
(window as unknown as { cifarkitPixels: (blob: Blob, fit?: Fit) => Promise<number[]> }).cifarkitPixels =
  async (blob, how = "squash") => Array.from(toModelPixels(await decodeImage(blob), how));

void start();
