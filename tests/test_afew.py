"""AFEW-VA on disk: layouts, every label checked, errors naming the clip."""

from pathlib import Path

import pytest
import synthetic_afew

from fercli.core.errors import DataError
from fercli.datasets import afew

REPO = Path(__file__).resolve().parents[1]

from conftest import copy_clip, edit_json  # noqa: E402

# --- reading and checking ----------------------------------------------------------------------


def test_reads_clips_actors_labels_and_landmarks(small):
    clips = afew.read_dataset(small)
    assert [c.id for c in clips] == ["001", "002", "003", "004", "005", "006"]
    assert clips[0].actor == "actor00" and clips[3].actor == "actor00"
    assert clips[0].n_frames == 12 and len(clips[0].images) == 12
    assert 4 not in clips[1].images  # the missing frame
    label = clips[0].labels[0]
    assert -10 <= label.valence <= 10 and abs(label.arousal) == synthetic_afew.AROUSAL
    assert label.landmarks.shape == (68, 2)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d.__setitem__("frames", []), "malformed JSON"),
        (lambda d: d["frames"]["00003"].__setitem__("valence", 11), "frame 00003: valence 11 is outside -10..10"),
        (lambda d: d["frames"]["00002"].__setitem__("arousal", -12), "arousal -12 is outside"),
        (lambda d: d["frames"]["00001"].__setitem__("valence", "high"), "not an integer label"),
        (lambda d: d["frames"]["00001"].__setitem__("arousal", 2.5), "not an integer label"),
        (
            lambda d: d["frames"]["00001"].__setitem__("valence", 10**400),
            r"valence \(a 401-digit number\) is outside",
        ),  # past float's range
        (lambda d: d["frames"]["00001"].__setitem__("arousal", -(10**30)), r"arousal \(a 31-digit number\) is outside"),
        (lambda d: d["frames"]["00001"].__setitem__("landmarks", [[10**400, 1]] * 68), "landmarks must be 68"),
        (lambda d: d["frames"]["00001"].__setitem__("landmarks", [[1, 2]] * 5), "landmarks must be 68"),
        (lambda d: d["frames"].__setitem__("frame7", d["frames"]["00001"]), "not a frame number"),
        (lambda d: d.__setitem__("video_id", "999"), "does not match the folder"),
    ],
)
def test_bad_labels_are_clear_errors_naming_the_clip(small, tmp_path, edit, message):
    folder = copy_clip(small, tmp_path)
    edit_json(folder, edit)
    with pytest.raises(DataError, match=message) as err:
        afew.read_dataset(tmp_path)
    assert "clip 001" in str(err.value)


@pytest.mark.parametrize(
    "key,message",
    [
        ("20000000", "frame 20000000 is past the largest frame number"),  # sized every array: 19 GiB
        ("9" * 5000, "is past the largest frame number"),
        ("²", "not a frame number"),  # str.isdigit() is true of it; int() is not
        ("٣", "not a frame number"),  # an Arabic-Indic three: int() reads it, the folder never names it so
        ("00040", r"frame 40 has labels but no image in .*last frame is 00011"),
    ],
)
def test_frame_keys_must_name_frames_the_clip_has(small, tmp_path, key, message):
    folder = copy_clip(small, tmp_path)
    edit_json(folder, lambda d: d["frames"].__setitem__(key, d["frames"]["00001"]))
    with pytest.raises(DataError, match=message) as err:
        afew.read_dataset(tmp_path)
    assert "clip 001" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"frames": {"00000": {"valence": 1' + "0" * 5000 + ', "arousal": 0}}}', "malformed JSON .*digits"),
        ('{"frames": ' + "[" * 200_000 + "]" * 200_000 + "}", "nested too deeply"),
        (b'{"frames": {"00000": {"valence": 1, "arousal": 0, "note": "\xff"}}}', "malformed JSON .*utf-8"),
    ],
)
def test_hostile_json_is_one_line_error_naming_the_clip(small, tmp_path, text, message):
    folder = copy_clip(small, tmp_path)
    path = folder / "001.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DataError, match=message) as err:
        afew.read_dataset(tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_an_image_numbered_past_the_largest_frame_is_named(small, tmp_path):
    folder = copy_clip(small, tmp_path)
    (folder / "00000.png").rename(folder / "20000000.png")
    with pytest.raises(DataError, match=r"20000000.png: frame number past the largest"):
        afew.read_dataset(tmp_path)


def test_unparsable_json_names_the_clip(small, tmp_path):
    folder = copy_clip(small, tmp_path)
    (folder / "001.json").write_text('{"frames": {"00000": ')
    with pytest.raises(DataError, match=r"clip 001 .*malformed JSON"):
        afew.read_dataset(tmp_path)


def test_missing_folder_or_label_file_names_the_clip(small, tmp_path):
    folder = copy_clip(small, tmp_path)
    (folder / "001.json").rename(tmp_path / "001.json")  # labels beside the root are accepted...
    assert [c.id for c in afew.read_dataset(tmp_path)] == ["001"]
    (tmp_path / "001.json").rename(tmp_path / "007.json")  # ...but labels whose folder is gone are not
    with pytest.raises(DataError, match=r"clip 007: .*frames folder .* is missing"):
        afew.read_dataset(tmp_path)
    (tmp_path / "007.json").unlink()
    with pytest.raises(DataError, match=r"clip 001 .*no label file 001.json"):
        afew.read_dataset(tmp_path)
    with pytest.raises(DataError, match="no such data folder"):
        afew.read_dataset(tmp_path / "nowhere")


def test_a_fifo_for_a_label_file_is_refused_not_waited_on(small, tmp_path):
    # Reading a FIFO blocks until someone writes to it: run the reader where a hang is a failure.
    import os
    import subprocess
    import sys

    folder = copy_clip(small, tmp_path)
    (folder / "001.json").unlink()
    os.mkfifo(tmp_path / "001.json")  # the layout with labels beside the frames folder
    code = (
        "import sys; from fercli.datasets import afew\n"
        "try:\n    afew.read_dataset(sys.argv[1])\nexcept Exception as e:\n    print(e)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert "clip 001" in done.stdout and "not a regular file" in done.stdout, done.stdout + done.stderr


def test_a_label_file_saved_with_a_byte_order_mark_reads_the_same(small, tmp_path):
    folder = copy_clip(small, tmp_path)
    path = folder / "001.json"
    before = afew.read_clip(folder)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as Windows' Notepad saves UTF-8
    after = afew.read_clip(folder)
    assert {k: (v.valence, v.arousal) for k, v in after.labels.items()} == {
        k: (v.valence, v.arousal) for k, v in before.labels.items()
    }
