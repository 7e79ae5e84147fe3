// The package ships the model that cifarkit ships (the page's copy in web/public/model): copied at build time,
// so the repository holds it once.
import { copyFileSync, mkdirSync } from "node:fs";

const from = new URL("../../../public/model/", import.meta.url);
const to = new URL("../model/", import.meta.url);
mkdirSync(to, { recursive: true });
for (const name of ["model.onnx", "model.json"]) copyFileSync(new URL(name, from), new URL(name, to));
