"""The exported model's metadata (model.json beside model.onnx): its format name, its version, and the JSON
schema (export-metadata.schema.json, shipped in the package) that the export checks before writing and that
the TypeScript library's `ModelInfo` is tested against. Plain data only: reading it imports no torch.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

EXPORT_FORMAT = "cifarkit-onnx"
EXPORT_VERSION = 1


def export_schema() -> dict:
    return json.loads(resources.files("cifarkit").joinpath("export-metadata.schema.json").read_text())


_JSON_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "null": type(None),
               "boolean": bool}


def schema_problems(value: Any, schema: dict, where: str = "metadata") -> list[str]:
    """What in `value` breaks `schema` (the subset of JSON Schema the export schema uses: type, const,
    required, properties, items, minItems); empty when it conforms."""
    problems = []
    if "const" in schema and value != schema["const"]:
        problems.append(f"{where} must be {schema['const']!r}, got {value!r}")
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(isinstance(value, _JSON_TYPES[k]) and not (isinstance(value, bool) and k in ("integer", "number"))
                   for k in kinds):
            return [*problems, f"{where} should be {' or '.join(kinds)}, got {type(value).__name__}"]
    if isinstance(value, dict):
        problems += [f"{where} lacks {key!r}" for key in schema.get("required", []) if key not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                problems += schema_problems(value[key], sub, f"{where}.{key}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            problems.append(f"{where} needs at least {schema['minItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                problems += schema_problems(item, schema["items"], f"{where}[{i}]")
    return problems


def version_problem(metadata: dict) -> str | None:
    """Why a reader of this version cannot read `metadata`, or None. No version: an export from before the
    field existed, which is version 1."""
    version = metadata.get("version", 1)
    if version == EXPORT_VERSION:
        return None
    return (f"its metadata version is {version!r} and this cifarkit reads version {EXPORT_VERSION}; "
            "export the model with this cifarkit (or upgrade cifarkit)")
