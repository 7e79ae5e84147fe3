"""Property-based tests: any byte string given to the parsers yields the project's own error, never a crash."""

from __future__ import annotations

import pickle

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cifarkit.data.safe_pickle import safe_loads
from cifarkit.errors import DatasetError
from tests.fakecifar import dumps

VALID = dumps({b"labels": [1, 2], b"data": b"\x00" * 8})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_any_bytes_give_dataset_error_or_plain_data(raw):
    try:
        safe_loads(raw, "fuzz")
    except DatasetError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(VALID)), st.binary(max_size=16))
def test_mutated_valid_pickle(cut, junk):
    try:
        safe_loads(VALID[:cut] + junk, "fuzz")
    except DatasetError:
        pass


def test_valid_pickle_still_loads():
    assert safe_loads(VALID, "ok") == pickle.loads(VALID, encoding="bytes")
