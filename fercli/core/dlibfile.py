"""dlib's serialization format, read in order from a file's bytes (dlib's model files, no dlib needed).

What dlib's `serialize.h` writes, as read here:

- integers: a control byte (low nibble: the byte count, 1 to 8; 0x80: negative), then the
  magnitude's bytes, little-endian;
- floats: an integer mantissa, then an integer exponent (value = mantissa * 2**exponent;
  exponents 32000, 32001, 32002 mark inf, -inf and NaN);
- strings: a length, then the bytes; booleans: the character '1' or '0';
- std::vector: its length, then each item; a matrix: minus its rows, minus its columns, then each
  element row by row;
- a tensor (dnn): version 2, its four sizes (samples, channels, rows, columns), then
  little-endian float32s; an alias tensor: version 1 and the four sizes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import WeightsError

TENSOR_VERSION = 2  # dlib's resizable_tensor format
FLOAT_SPECIAL = {32000: math.inf, 32001: -math.inf, 32002: math.nan}  # exponents that mark inf, -inf, NaN


class DlibReader:
    """dlib's serialized values, read one after another from `data` (the bytes of `path`, a `what`)."""

    def __init__(self, data: bytes, path: Path, what: str):
        self.data, self.pos, self.path, self.what = data, 0, path, what

    def fail(self, problem: str):
        raise WeightsError(f"{self.path}: not {self.what} ({problem} at byte {self.pos})")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            self.fail("the file ends early")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            self.fail(f"an integer's control byte 0x{control:02x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return FLOAT_SPECIAL[exponent] if exponent in FLOAT_SPECIAL else math.ldexp(mantissa, exponent)

    def floats(self, n: int) -> np.ndarray:
        """`n` floats in a row, as float32."""
        return np.array([self.float() for _ in range(n)], np.float32)

    def string(self) -> str:
        return self.take(self.int()).decode("latin-1")

    def bool(self) -> bool:
        ch = self.take(1)
        if ch not in (b"0", b"1"):
            self.fail(f"a boolean {ch!r}")
        return ch == b"1"

    def count(self, limit: int) -> int:
        """A length (of a vector or a matrix side) no larger than `limit`."""
        n = abs(self.int())
        if n > limit:
            self.fail(f"a length of {n}")
        return n

    def matrix(self) -> np.ndarray:
        """A dlib matrix of floats, as a 2-d float32 array."""
        rows, cols = self.count(1 << 20), self.count(1 << 20)
        return self.floats(rows * cols).reshape(rows, cols)

    def tensor(self) -> np.ndarray:
        if self.int() != TENSOR_VERSION:
            self.fail("a tensor's version")
        shape = tuple(self.int() for _ in range(4))
        return np.frombuffer(self.take(4 * math.prod(shape)), "<f4").reshape(shape).astype(np.float32)

    def alias(self) -> tuple[int, ...]:
        if self.int() != 1:
            self.fail("an alias tensor's version")
        return tuple(self.int() for _ in range(4))

    def version(self, name: str, allowed: tuple[int, ...]) -> int:
        v = self.int()
        if v not in allowed:
            self.fail(f"{name} version {v}")
        return v

    def expect(self, prefixes: tuple[str, ...]) -> str:
        s = self.string()
        if not s.startswith(prefixes):
            self.fail(f"layer {s!r} where {prefixes[0]!r} belongs")
        return s

    def end(self) -> None:
        if self.pos != len(self.data):
            self.fail("bytes after the end")


def int_stream(data: bytes, path: Path, what: str) -> np.ndarray:
    """Every value of a file that holds nothing but dlib integers (and floats, which are two), in
    order, as int64: a landmark file holds millions, too many to read one by one in Python.

    Each control byte says where the next one is: only that walk is done value by value, the
    values themselves are decoded together.
    """
    b = np.frombuffer(data, np.uint8)
    n, at, starts = len(data), 0, []
    add = starts.append
    while at < n:
        add(at)
        at += 1 + (data[at] & 0x0F)
    chain = np.array(starts, np.int64)
    control = b[chain]
    size = (control & 0x0F).astype(np.int64)
    bad = (size == 0) | (size > 8) | (control & 0x70 != 0) | (chain + 1 + size > n)
    if bad.any():
        at = int(chain[np.argmax(bad)])
        raise WeightsError(f"{path}: not {what} (an integer's control byte 0x{b[at]:02x} at byte {at})")
    value = np.zeros(len(chain), np.uint64)
    for k in range(8):
        has = size > k
        value[has] |= b[chain[has] + 1 + k].astype(np.uint64) << np.uint64(8 * k)
    value = value.astype(np.int64)
    return np.where(control & 0x80, -value, value)
