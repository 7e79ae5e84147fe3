/** The page's Teach mode: name classes, add pictures to each (pick, drop, camera), teach a head on the model's
 * features in the page with a progress bar, classify with it, download it and load it again. Nothing leaves the
 * device: the pictures are decoded and learned from here. */
import {
  TeachError, type BrowserClassifier, type BrowserImageInput, type Fit, type TaughtClassifier,
} from "@cifarkit/classify";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

export interface TeachUi {
  /** the taught classifier, while one is in use */
  current(): TaughtClassifier<BrowserImageInput> | null;
}

export function setUpTeaching(getClassifier: () => BrowserClassifier | null, fit: () => Fit,
                              onChange: () => void): TeachUi {
  const rows = $<HTMLDivElement>("teach-classes");
  const status = $<HTMLParagraphElement>("teach-status");
  const progress = $<HTMLProgressElement>("teach-progress");
  const download = $<HTMLButtonElement>("teach-download");
  const forget = $<HTMLButtonElement>("teach-forget");
  const pictures = new Map<HTMLElement, File[]>();
  let taught: TaughtClassifier<BrowserImageInput> | null = null;

  const say = (text: string, kind: "info" | "error" = "info") => {
    status.textContent = text;
    status.dataset.kind = kind;
  };
  const use = (next: TaughtClassifier<BrowserImageInput> | null) => {
    taught = next;
    download.disabled = forget.disabled = next === null;
    document.body.dataset.taught = next ? next.labels.join("\n") : "";
    onChange();
  };

  function addRow() {
    const row = document.createElement("div");
    row.className = "teach-row";
    const name = document.createElement("input");
    name.className = "teach-name";
    name.value = `class ${rows.children.length + 1}`;
    name.setAttribute("aria-label", "class name");
    const files = document.createElement("input");
    files.type = "file";
    files.multiple = true;
    files.accept = "image/*";
    files.className = "teach-files";
    const count = document.createElement("span");
    count.className = "teach-count";
    count.textContent = "no pictures";
    const add = (list: File[]) => {
      pictures.set(row, [...(pictures.get(row) ?? []), ...list]);
      const n = pictures.get(row)!.length;
      count.textContent = `${n} picture${n === 1 ? "" : "s"}`;
    };
    files.addEventListener("change", () => {
      add(Array.from(files.files ?? []));
      files.value = "";
    });
    row.addEventListener("dragover", (event) => { event.preventDefault(); row.classList.add("over"); });
    row.addEventListener("dragleave", () => row.classList.remove("over"));
    row.addEventListener("drop", (event) => {
      event.preventDefault();
      event.stopPropagation();
      row.classList.remove("over");
      add(Array.from(event.dataTransfer?.files ?? []));
    });
    row.append(name, files, count);
    rows.append(row);
  }

  async function teach() {
    const classifier = getClassifier();
    if (!classifier) return say("The model is not loaded yet.", "error");
    const examples = [...rows.querySelectorAll<HTMLElement>(".teach-row")].flatMap((row) => {
      const label = row.querySelector<HTMLInputElement>(".teach-name")!.value.trim();
      return (pictures.get(row) ?? []).map((image) => ({ label, image: image as BrowserImageInput }));
    });
    const empty = [...rows.querySelectorAll<HTMLElement>(".teach-row")].find((row) => !pictures.get(row)?.length);
    if (empty) return say(`"${empty.querySelector<HTMLInputElement>(".teach-name")!.value}" has no pictures yet.`, "error");
    progress.hidden = false;
    progress.value = 0;
    say(`Learning from ${examples.length} pictures…`);
    const started = performance.now();
    try {
      const result = await classifier.teach(examples, {
        fit: fit(), onProgress: ({ done, total }) => { progress.value = done / total; },
      });
      use(result);
      const { held_out: heldOut, labels } = result.head;
      say(`Taught ${labels.length} classes in ${((performance.now() - started) / 1000).toFixed(1)} s` +
          (heldOut ? `: ${(heldOut.accuracy * 100).toFixed(0)}% right on ${heldOut.images} pictures it kept aside.`
                   : " (5 or more pictures per class would let it check itself).") + " Choose a picture above.");
    } catch (error) {
      say(error instanceof Error ? error.message : String(error), "error");
    } finally {
      progress.hidden = true;
    }
  }

  $<HTMLButtonElement>("teach-add").addEventListener("click", addRow);
  $<HTMLButtonElement>("teach-train").addEventListener("click", () => void teach());
  forget.addEventListener("click", () => {
    use(null);
    say("Back to the model's own classes.");
  });
  download.addEventListener("click", () => {
    if (!taught) return;
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([JSON.stringify(taught.toJSON(), null, 2)], { type: "application/json" }));
    link.download = "head.json";
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  });
  const load = $<HTMLInputElement>("teach-load");
  load.addEventListener("change", async () => {
    const file = load.files?.[0];
    load.value = "";
    const classifier = getClassifier();
    if (!file || !classifier) return;
    try {
      use(classifier.withHead(JSON.parse(await file.text())));
      say(`Loaded ${file.name}: ${taught!.labels.join(", ")}. Choose a picture above.`);
    } catch (error) {
      say(error instanceof SyntaxError ? `${file.name} is not JSON (it should be a head.json this page wrote)`
        : error instanceof TeachError ? error.message : String(error), "error");
    }
  });
  addRow();
  addRow();
  return { current: () => taught };
}
