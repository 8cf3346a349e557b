"""fercli.core.dlibfile: dlib's serialization format, against bytes written by hand from dlib's rules."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest

from fercli.core.dlibfile import DlibReader, int_stream
from fercli.core.errors import WeightsError

PATH = Path("model.dat")


def dlib_int(v: int) -> bytes:
    """dlib's integer by its rule: a control byte (byte count, 0x80 when negative), then the
    magnitude's bytes, little-endian, as few as hold it (0 takes one byte)."""
    magnitude = abs(v)
    body = magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if v < 0 else 0)]) + body


def dlib_float(mantissa: int, exponent: int) -> bytes:
    return dlib_int(mantissa) + dlib_int(exponent)


def test_integers_floats_strings_booleans_and_tensors_by_hand():
    data = (
        dlib_int(0)
        + dlib_int(-300)
        + dlib_int(2**40 + 5)
        + dlib_float(3, -2)
        + dlib_float(-5, 1)
        + dlib_float(0, 32000)
        + dlib_int(5)
        + b"con_4"
        + b"1"
        + b"0"
        + dlib_int(2)
        + b"".join(dlib_int(n) for n in (1, 2, 1, 3))
        + struct.pack("<6f", 1, 2, 3, 4, 5, 6.5)
    )
    assert data[:4] == b"\x01\x00\x82\x2c"  # 0, then -300 = 0x012c as two bytes
    r = DlibReader(data, PATH, "a test file")
    assert [r.int(), r.int(), r.int()] == [0, -300, 2**40 + 5]
    assert [r.float(), r.float(), r.float()] == [0.75, -10.0, math.inf]
    assert r.string() == "con_4" and r.bool() and not r.bool()
    np.testing.assert_array_equal(r.tensor(), np.array([1, 2, 3, 4, 5, 6.5], np.float32).reshape(1, 2, 1, 3))
    r.end()


def test_int_stream_decodes_every_value_at_once():
    values = np.random.default_rng(0).integers(-(2**40), 2**40, 500)
    values[::7] = 0
    data = b"".join(dlib_int(int(v)) for v in values)
    np.testing.assert_array_equal(int_stream(data, PATH, "a test file"), values)


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"\x70\x01", "control byte 0x70"),  # reserved bits set
        (b"\x00", "control byte 0x00"),  # no bytes
        (b"\x02\x01", "ends early"),  # two bytes promised, one given
    ],
)
def test_bad_bytes_are_one_line_naming_the_file(data, problem):
    with pytest.raises(WeightsError, match=problem) as err:
        DlibReader(data, PATH, "a test file").int()
    assert str(err.value).startswith("model.dat: not a test file") and "\n" not in str(err.value)
    if problem != "ends early":
        with pytest.raises(WeightsError, match="model.dat: not a test file"):
            int_stream(data, PATH, "a test file")
