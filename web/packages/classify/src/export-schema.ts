// Generated from src/cifarkit/export-metadata.schema.json by scripts/copy-model.mjs: do not edit.
export const EXPORT_SCHEMA = {
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "$id": "https://github.com/cifarkit/cifarkit/export-metadata.schema.json",
  "title": "cifarkit ONNX export metadata (model.json beside model.onnx)",
  "description": "Written by `cifarkit export`; read by `cifarkit serve-web`, the browser page and @cifarkit/classify. A reader refuses a version it does not know; a file without a version is version 1 (exports before the field existed).",
  "type": "object",
  "required": [
    "format",
    "version",
    "model",
    "dataset",
    "classes",
    "superclasses",
    "fine_to_coarse",
    "input",
    "output",
    "preprocess",
    "temperature",
    "model_file",
    "model_sha256"
  ],
  "properties": {
    "format": {
      "const": "cifarkit-onnx"
    },
    "version": {
      "const": 1
    },
    "model": {
      "type": "string",
      "description": "the registered model name (cifarkit models)"
    },
    "dataset": {
      "type": "string"
    },
    "classes": {
      "type": "array",
      "items": {
        "type": "string"
      },
      "minItems": 1
    },
    "superclasses": {
      "type": [
        "array",
        "null"
      ],
      "items": {
        "type": "string"
      }
    },
    "fine_to_coarse": {
      "type": [
        "array",
        "null"
      ],
      "items": {
        "type": "integer"
      }
    },
    "input": {
      "type": "object",
      "required": [
        "name",
        "dtype",
        "shape",
        "layout",
        "channels",
        "range"
      ],
      "properties": {
        "name": {
          "const": "pixels"
        },
        "dtype": {
          "const": "uint8"
        },
        "shape": {
          "type": "array"
        },
        "layout": {
          "const": "NHWC"
        },
        "channels": {
          "const": "RGB"
        },
        "range": {
          "type": "array"
        },
        "resize": {
          "type": "string"
        }
      }
    },
    "output": {
      "type": "object",
      "required": [
        "name",
        "dtype",
        "shape"
      ],
      "properties": {
        "name": {
          "const": "probabilities"
        },
        "dtype": {
          "const": "float32"
        },
        "shape": {
          "type": "array"
        }
      }
    },
    "preprocess": {
      "type": "object"
    },
    "temperature": {
      "type": "number",
      "description": "baked into the model: its probabilities are softmax(logits / temperature)"
    },
    "source_checkpoint": {
      "type": "string"
    },
    "source_checkpoint_sha256": {
      "type": "string"
    },
    "step": {
      "type": "integer"
    },
    "val": {
      "type": [
        "object",
        "null"
      ]
    },
    "test": {
      "type": [
        "object",
        "null"
      ]
    },
    "parity": {
      "type": "object"
    },
    "quantization": {
      "type": "object"
    },
    "model_file": {
      "type": "string"
    },
    "model_sha256": {
      "type": "string"
    }
  }
} as const;
