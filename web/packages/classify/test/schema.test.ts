/** The model metadata contract: cifarkit's published JSON schema (src/cifarkit/export-metadata.schema.json)
 * against this library's ModelInfo, and the version check. */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { checkModelInfo, MODEL_INFO_FIELDS, MODEL_INFO_VERSIONS, ModelLoadError } from "../src/core.js";
import { EXPORT_SCHEMA } from "../src/export-schema.js";

const schema = JSON.parse(readFileSync(join(__dirname, "../../../../src/cifarkit/export-metadata.schema.json"), "utf8"));
const shipped = JSON.parse(readFileSync(join(__dirname, "../model/model.json"), "utf8"));

describe("export-metadata.schema.json", () => {
  it("is the schema checkModelInfo reads (src/export-schema.ts, generated from it at build time)", () => {
    expect(EXPORT_SCHEMA).toEqual(schema);
  });

  it("declares exactly the fields ModelInfo declares, and the version this library reads", () => {
    expect([...MODEL_INFO_FIELDS].sort()).toEqual(Object.keys(schema.properties).sort());
    expect(schema.properties.version.enum).toEqual([...MODEL_INFO_VERSIONS]);
    expect(schema.properties.format.const).toBe("cifarkit-onnx");
  });

  it("the shipped model.json has every field the schema requires", () => {
    for (const field of schema.required as string[]) expect(shipped).toHaveProperty(field);
    expect(checkModelInfo(shipped, "model.json")).toBe(shipped);
  });

  it("refuses a version it does not read, with what to do", () => {
    expect(() => checkModelInfo({ ...shipped, version: 3 }, "model.json")).toThrow(ModelLoadError);
    expect(() => checkModelInfo({ ...shipped, version: 3 }, "model.json")).toThrow(/version is 3 and this library reads versions 1, 2/);
    const { version: _, features: _f, outlier: _o, ...older } = shipped; // an export from before the field existed: version 1
    expect(checkModelInfo(older, "model.json")).toBe(older);
    expect(checkModelInfo({ ...older, version: 1 }, "model.json")).toBeTruthy();
  });

  it("refuses a tampered features fingerprint or outlier threshold", () => {
    expect(() => checkModelInfo({ ...shipped, features: { ...shipped.features, fingerprint: "abc" } }, "model.json"))
      .toThrow(/fingerprint is not a SHA-256/);
    expect(() => checkModelInfo({ ...shipped, outlier: { ...shipped.outlier, threshold: "high" } }, "model.json"))
      .toThrow(ModelLoadError);
  });
});
