// Generated from src/cifarkit/export-metadata.schema.json by scripts/copy-model.mjs: do not edit.
export const EXPORT_SCHEMA = {
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "$id": "https://github.com/cifarkit/cifarkit/export-metadata.schema.json",
  "title": "cifarkit ONNX export metadata (model.json beside model.onnx)",
  "description": "Written by `cifarkit export`; read by `cifarkit serve-web`, the browser page and @cifarkit/classify. A reader refuses a version it does not know; a file without a version is version 1 (exports before the field existed). Version 2 adds the optional `features` and `outlier` fields (and the graph outputs they describe); readers of version 2 read version 1 too.",
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
      "enum": [
        1,
        2
      ],
      "description": "2: the features output, and outlier_score where the model has an outlier record"
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
    "features": {
      "type": "object",
      "required": [
        "name",
        "dtype",
        "shape",
        "fingerprint"
      ],
      "description": "version 2: the `features` output, (batch, D) float32, the penultimate layer after pooling, what a head for new classes is taught on; fingerprint: sha256 of the feature extractor, so a head taught on one model is refused by another",
      "properties": {
        "name": {
          "const": "features"
        },
        "dtype": {
          "const": "float32"
        },
        "shape": {
          "type": "array"
        },
        "fingerprint": {
          "type": "string"
        }
      }
    },
    "outlier": {
      "type": "object",
      "required": [
        "name",
        "dtype",
        "shape",
        "score",
        "threshold"
      ],
      "description": "version 2, where the model has an outlier record: the `outlier_score` output, (batch,) float32, higher = less likely one of the classes; a picture is known when its score <= threshold (which keeps known_rate of the validation split known)",
      "properties": {
        "name": {
          "const": "outlier_score"
        },
        "dtype": {
          "const": "float32"
        },
        "shape": {
          "type": "array"
        },
        "score": {
          "type": "string"
        },
        "threshold": {
          "type": "number"
        },
        "known_rate": {
          "type": [
            "number",
            "null"
          ]
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
