"""Errors the library raises; the CLI maps them to one-line messages and exit codes."""

from __future__ import annotations


class FerError(Exception):
    """Base class: a problem the user can act on. str(error) is a one-line message."""


class VideoError(FerError):
    """A clip that cannot be read (missing, empty, truncated, not a video, no frames)."""


class WeightsError(FerError):
    """A weights file that is missing, cannot be fetched, fails its hash, or is not a model."""


class DataError(FerError):
    """A data set or annotation file that is malformed (bad JSON, labels out of range, ...)."""


def printable(text: str) -> str:
    """`text` with every control or format character (newlines, escape sequences, bidi marks)
    written as a Python escape, so a file's name shows as it is and cannot drive the terminal."""
    import unicodedata

    return "".join(
        c if c == " " or unicodedata.category(c)[0] not in "CZ" else c.encode("unicode_escape").decode() for c in text
    )


def valid_text(text: str) -> str:
    """`text` with each lone surrogate written as an escape: a file name that is not UTF-8 (Python
    reads byte 0xff as U+DCFF) as `bad\\xff.mp4`, which Parquet, CSV and JSON can store."""
    if text.isascii() or not any("\ud800" <= c <= "\udfff" for c in text):
        return text
    return "".join(
        c
        if not "\ud800" <= c <= "\udfff"
        else f"\\x{ord(c) - 0xDC00:02x}"
        if 0xDC80 <= ord(c) <= 0xDCFF
        else f"\\u{ord(c):04x}"
        for c in text
    )


def first_line(error: BaseException | str) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line
    errors; a string's own first line."""
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else ("" if isinstance(error, str) else type(error).__name__)


def typed_line(error: BaseException) -> str:
    """`Type: first line` (only `Type` without a message): an unexpected error on one line."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0].strip()}" if lines else type(error).__name__
