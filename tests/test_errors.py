"""One-line error text: `first_line`, `typed_line` and `printable`, against hand-written cases."""

import pytest

from fercli.core.errors import (
    DataError,
    FerError,
    VideoError,
    WeightsError,
    first_line,
    printable,
    typed_line,
)


@pytest.mark.parametrize(
    "error, line",
    [
        (ValueError("bad value\n  at line 3\n"), "bad value"),
        (ValueError("\n\n  indented first  \nsecond"), "indented first"),
        (KeyError(), "KeyError"),  # no message: its type's name
        ("one\ntwo", "one"),
        ("", ""),  # a string has no type to fall back on
    ],
)
def test_first_line_is_the_first_non_empty_line(error, line):
    assert first_line(error) == line


def test_typed_line_names_the_type():
    assert typed_line(OSError("No space left on device\ndetail")) == "OSError: No space left on device"
    assert typed_line(RuntimeError()) == "RuntimeError"


def test_printable_escapes_what_could_drive_a_terminal():
    name = "clip\n\x1b[31mred\u202e.mp4"
    shown = printable(name)
    assert "\n" not in shown and "\x1b" not in shown and "\u202e" not in shown
    assert shown == "clip\\n\\x1b[31mred\\u202e.mp4"
    assert printable("plain name é.mp4") == "plain name é.mp4"  # letters and spaces stay


def test_every_kind_is_a_fer_error():
    assert all(issubclass(kind, FerError) for kind in (VideoError, WeightsError, DataError))
