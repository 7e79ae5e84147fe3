"""The exported model's metadata (model.json beside model.onnx): its format name, its version, and the JSON
schema (export-metadata.schema.json, shipped in the package) that the export checks before writing and that
the TypeScript library's `ModelInfo` is tested against. Plain data only: reading it imports no torch.
"""

from __future__ import annotations

import json
import math
import re
from importlib import resources
from typing import Any

EXPORT_FORMAT = "cifarkit-onnx"
EXPORT_VERSION = 2  # 2: the `features` output (and `outlier_score` where fitted) beside `probabilities`
READABLE_VERSIONS = (1, 2)  # a version 1 export still loads: it classifies, but cannot be taught or say "none"


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
    if "enum" in schema and not any(value == option and type(value) is type(option) for option in schema["enum"]):
        problems.append(f"{where} must be one of {', '.join(map(repr, schema['enum']))}, got {value!r}")
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
    if version in READABLE_VERSIONS and isinstance(version, int) and not isinstance(version, bool):
        return None
    return (f"its metadata version is {json.dumps(version)} and this cifarkit reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; export the model with this cifarkit (or upgrade cifarkit)")


FORBIDDEN_KEYS = ("__proto__", "constructor", "prototype")  # keys that mean something else to a JavaScript reader
TEMPERATURE_RANGE = (0.05, 20.0)  # as cifarkit.calibration fits it


def _forbidden_key(value, where: str = "metadata") -> str | None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in FORBIDDEN_KEYS:
                return f"{where} holds a key named {key!r}"
            if (found := _forbidden_key(item, f"{where}.{key}")) is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if (found := _forbidden_key(item, f"{where}[{i}]")) is not None:
                return found
    return None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metadata_problems(metadata) -> list[str]:
    """Every reason a reader refuses this model.json (empty: it is read). One verdict for every reader: serve-web
    here, and @cifarkit/classify's checkModelInfo, which implements the same rules (a test holds the two to the
    same verdict on the same files). The schema's required fields, except `version` (absent: version 1)."""
    if not isinstance(metadata, dict):
        return ["it is not a JSON object"]
    if metadata.get("format") != EXPORT_FORMAT:
        return [f"it is not a cifarkit export (no \"format\": \"{EXPORT_FORMAT}\")"]
    if (problem := version_problem(metadata)) is not None:
        return [problem]
    schema = export_schema()
    schema = {**schema, "required": [key for key in schema["required"] if key != "version"]}
    problems = schema_problems(metadata, schema)
    if (found := _forbidden_key(metadata)) is not None:
        problems.append(found)
    classes, coarse, names = metadata.get("classes"), metadata.get("fine_to_coarse"), metadata.get("superclasses")
    if isinstance(classes, list) and isinstance(coarse, list) and (
            len(coarse) != len(classes) or not isinstance(names, list)
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(names) for c in coarse)):
        problems.append("its superclass map does not give each class a superclass it names")
    temperature = metadata.get("temperature")
    if "temperature" in metadata and not (_number(temperature)
                                          and TEMPERATURE_RANGE[0] <= temperature <= TEMPERATURE_RANGE[1]):
        problems.append(f"its temperature must be a number in [{TEMPERATURE_RANGE[0]}, {TEMPERATURE_RANGE[1]}]")
    digest = metadata.get("model_sha256")
    if "model_sha256" in metadata and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        problems.append("its model_sha256 is not a SHA-256 digest (64 hexadecimal digits)")
    features = metadata.get("features")
    if isinstance(features, dict) and not (isinstance(features.get("fingerprint"), str)
                                           and re.fullmatch(r"[0-9a-f]{64}", features["fingerprint"])):
        problems.append("its features fingerprint is not a SHA-256 digest (64 hexadecimal digits)")
    outlier = metadata.get("outlier")
    if isinstance(outlier, dict) and not _number(outlier.get("threshold")):
        problems.append("its outlier threshold is not a finite number")
    parity = metadata.get("parity")
    if isinstance(parity, dict) and "max_abs_difference" in parity and not _number(parity["max_abs_difference"]):
        problems.append("its outputs were not finite numbers when it was exported (a model that diverged)")
    return problems
