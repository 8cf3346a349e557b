from pathlib import Path

from fercli.media.inputs import find_clips


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_mixed_files_and_folders_in_stable_order(tmp_path):
    root = tmp_path / "videos"
    for name in ["b.MP4", "a.mkv", "z/c.webm", "y/d.m4v", "y/e.mov", "notes.txt", "z/thumb.db"]:
        touch(root / name)
    single = touch(tmp_path / "extra.avi")
    found = find_clips([root, single, tmp_path / "missing.mp4"])
    assert [c.name for c in found.clips] == ["a.mkv", "b.MP4", "y/d.m4v", "y/e.mov", "z/c.webm", "extra.avi"]
    assert found.skipped == 2
    assert found.missing == [tmp_path / "missing.mp4"]


def test_frame_folder_is_one_clip(tmp_path):
    root = tmp_path / "afew"
    for clip in ("001", "002"):
        for i in range(3):
            touch(root / clip / f"{i:05d}.png")
        touch(root / clip / f"{clip}.json")
    found = find_clips([root, root / "002"])
    assert [(c.name, c.frames) for c in found.clips] == [("001", True), ("002", True)]
    assert found.skipped == 2  # the two json files


def test_folder_with_videos_and_images_reads_the_videos(tmp_path):
    touch(tmp_path / "v" / "clip.mp4")
    touch(tmp_path / "v" / "poster.png")
    found = find_clips([tmp_path / "v"])
    assert [(c.name, c.frames) for c in found.clips] == [("clip.mp4", False)]
    assert found.skipped == 1


def test_same_file_twice_is_kept_once(tmp_path):
    f = touch(tmp_path / "v" / "a.mp4")
    assert len(find_clips([tmp_path / "v", f]).clips) == 1


def test_a_file_named_on_its_own_is_a_clip_whatever_its_suffix(tmp_path):
    # Inside a folder only video suffixes count; a named file is tried, so a non-video fails loudly.
    named = [touch(tmp_path / "notes.txt"), touch(tmp_path / "recording.dat")]
    found = find_clips(named)
    assert [c.name for c in found.clips] == ["notes.txt", "recording.dat"] and found.skipped == 0


def test_common_camera_and_broadcast_containers_are_found_in_folders(tmp_path):
    names = ["a.mts", "b.m2ts", "c.mpg", "d.wmv", "e.3gp", "f.ts", "g.flv", "h.mxf", "i.ogv"]
    for name in names:
        touch(tmp_path / "v" / name)
    assert [c.name for c in find_clips([tmp_path / "v"]).clips] == names


def test_every_frame_suffix_the_search_accepts_is_one_decode_reads(tmp_path):
    import numpy as np
    from PIL import Image

    from fercli.media.decode import open_video
    from fercli.media.inputs import IMAGE_EXTENSIONS

    for suffix in sorted(IMAGE_EXTENSIONS):
        folder = tmp_path / suffix.strip(".")
        folder.mkdir()
        for i in range(3):
            Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(folder / f"{i:05d}{suffix}")
        (clip,) = find_clips([folder]).clips
        assert clip.frames
        with open_video(clip.path, frames_fps=3) as video:
            frames = list(video.sample(3))
        assert [int(f.image.mean()) for f in frames] == [0, 40, 80]


def test_symbolic_link_loops_under_a_folder_are_not_fatal(tmp_path):
    root = tmp_path / "videos"
    touch(root / "a.mp4")
    (root / "notes").symlink_to("notes")  # a loop onto itself: skipped, as any other non-video
    (root / "sub").mkdir()
    (root / "sub" / "loop.mp4").symlink_to("loop.mp4")  # a loop with a video's name: a clip that will fail alone
    found = find_clips([root])
    assert [c.name for c in found.clips] == ["a.mp4", "sub/loop.mp4"]
    assert found.skipped == 1


def test_a_folder_tree_deeper_than_pythons_stack_is_searched(tmp_path):
    # os.walk recursed (CPython 3.11): 1,100 folders deep raised RecursionError and stopped the batch.
    deep = tmp_path / "b"
    deep.mkdir()
    for _ in range(1100):  # one level at a time: Path.mkdir(parents=True) recurses too
        deep = deep / "d"
        deep.mkdir()
    (deep / "clip.mp4").write_bytes(b"x")
    (tmp_path / "b" / "top.mp4").write_bytes(b"x")
    try:
        found = find_clips([tmp_path / "b"])
        assert [c.name for c in found.clips] == ["top.mp4", "d/" * 1100 + "clip.mp4"]  # os.walk's order
    finally:  # bottom up, one level at a time: shutil.rmtree recurses as well
        (deep / "clip.mp4").unlink()
        while deep != tmp_path / "b":
            deep.rmdir()
            deep = deep.parent


def test_a_file_name_that_is_not_utf8_is_kept_with_escapes(tmp_path):
    import os

    (tmp_path / os.fsdecode(b"bad\xff\xfe.mp4")).write_bytes(b"x")
    (found,) = find_clips([tmp_path]).clips
    assert found.name == "bad\\xff\\xfe.mp4" and found.name.encode("utf-8")  # what a table can store
    assert found.path.exists()  # the file itself is still reached by its real name
