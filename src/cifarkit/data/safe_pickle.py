"""A restricted unpickler for the official CIFAR files.

The archives hold Python pickles, and a pickle can call any importable function. This unpickler admits only
what the official files contain: dicts, lists, bytes/str, ints and numpy's array reconstruction. Anything
else (`os.system`, `builtins.eval`, ...) is refused before it is looked up, so a crafted file is rejected,
never executed.
"""

from __future__ import annotations

import codecs
import io
import pickle

import numpy as np

from cifarkit.errors import DatasetError

# numpy pickles arrays as `_reconstruct(ndarray, shape, dtype)` + setstate; the module name moved in numpy 2.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 writes bytes as `_codecs.encode(str, "latin1")` under pickle protocol 2; admit only that form.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: the official CIFAR files never reference it"
            ) from None


def safe_loads(data: bytes, source: str) -> object:
    """Unpickle `data` (read from `source`, named in errors) admitting only what CIFAR files contain."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # a refused global, or any malformed byte string: truncated, bad opcodes, ...
        raise DatasetError(
            f"{source}: corrupt, truncated or not an official CIFAR file ({e}); delete it and download again"
        ) from None
