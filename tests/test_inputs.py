from pathlib import Path

from fercli.inputs import find_clips


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
