// The package ships the model that cifarkit ships (the page's copy in web/public/model): copied at build time,
// so the repository holds it once. cifarkit's published metadata schema becomes src/export-schema.ts, the one
// definition checkModelInfo reads (committed too, so the sources type-check before a build; a test holds the
// two equal).
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";

const from = new URL("../../../public/model/", import.meta.url);
const to = new URL("../model/", import.meta.url);
mkdirSync(to, { recursive: true });
for (const name of ["model.onnx", "model.json"]) copyFileSync(new URL(name, from), new URL(name, to));

const schema = JSON.parse(readFileSync(new URL("../../../../src/cifarkit/export-metadata.schema.json",
                                               import.meta.url), "utf8"));
writeFileSync(new URL("../src/export-schema.ts", import.meta.url),
  "// Generated from src/cifarkit/export-metadata.schema.json by scripts/copy-model.mjs: do not edit.\n" +
  `export const EXPORT_SCHEMA = ${JSON.stringify(schema, null, 2)} as const;\n`);
