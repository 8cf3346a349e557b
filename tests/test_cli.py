import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from fercli.cli import app
from fercli.tables.writers import read_metadata, read_table

runner = CliRunner()


def fer(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_is_quick_and_has_examples():
    proc = subprocess.run([sys.executable, "-m", "fercli.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "annotate" in proc.stdout
    check = (
        "import sys, fercli.cli; print(sorted(m for m in ('torch','av','ai_edge_litert','numpy') if m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", check], capture_output=True, text=True).stdout.strip() == "[]"
    result = fer("annotate", "--help")
    assert "Examples" in result.output and "--resume" in result.output


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, clips_dir, broken_dir, lstm_checkpoint):
    out = tmp_path_factory.mktemp("cli") / "clean.parquet"
    result = fer("annotate", clips_dir, broken_dir, "--out", out, "--model", lstm_checkpoint)
    return result, out


@pytest.mark.smoke
def test_exit_status_and_errors_file(clean_run):
    result, out = clean_run
    assert result.exit_code == 1, result.output
    errors = pd.read_csv(out.with_name("clean.parquet.errors.csv"))
    assert sorted(errors.video) == ["empty.mp4", "notavideo.mov", "truncated.mp4"]
    assert "3 failed" in result.output


@pytest.mark.smoke
def test_all_good_exits_zero_and_csv_equals_parquet(tmp_path, clips_dir, clean_run, lstm_checkpoint):
    _, clean_out = clean_run
    out = tmp_path / "r.csv"
    result = fer("annotate", clips_dir, "--out", out, "--model", lstm_checkpoint)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "r.csv.errors.csv").exists()
    pd.testing.assert_frame_equal(read_table(out), read_table(clean_out), check_dtype=False, atol=1e-5)


def test_resume_gives_the_same_table_as_a_clean_run(tmp_path, clips_dir, broken_dir, clean_run, lstm_checkpoint):
    _, clean_out = clean_run
    out = tmp_path / "r.parquet"
    first = fer("annotate", clips_dir / "moving.mp4", clips_dir / "odd.avi", "--out", out, "--model", lstm_checkpoint)
    assert first.exit_code == 0, first.output
    result = fer("annotate", clips_dir, broken_dir, "--out", out, "--model", lstm_checkpoint, "--resume")
    assert result.exit_code == 1
    assert "resumed" in result.output
    pd.testing.assert_frame_equal(read_table(out), read_table(clean_out))


def test_resume_refuses_another_model(tmp_path, clips_dir, lstm_checkpoint, frame_checkpoint):
    out = tmp_path / "r.parquet"
    assert fer("annotate", clips_dir / "odd.avi", "--out", out, "--model", lstm_checkpoint).exit_code == 0
    result = fer("annotate", clips_dir, "--out", out, "--model", frame_checkpoint, "--resume")
    assert result.exit_code == 2 and "cannot resume" in result.output


def test_a_second_run_never_merges_silently(tmp_path, clips_dir, lstm_checkpoint, frame_checkpoint):
    out = tmp_path / "r.parquet"
    assert fer("annotate", clips_dir / "moving.mp4", "--out", out, "--model", lstm_checkpoint).exit_code == 0
    before = out.read_bytes()
    refused = fer("annotate", clips_dir / "odd.avi", "--out", out, "--model", frame_checkpoint)
    assert refused.exit_code == 2
    message = " ".join(refused.output.split())  # rich wraps long lines
    assert "r.parquet already exists" in message and "--resume" in message and "--overwrite" in message
    assert out.read_bytes() == before
    replaced = fer("annotate", clips_dir / "odd.avi", "--out", out, "--model", frame_checkpoint, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    df = read_table(out)
    assert set(df.video) == {"odd.avi"} and read_metadata(out)["arch"] == "hsemotion"


def test_bad_arguments_exit_two(tmp_path, clips_dir, lstm_checkpoint):
    assert (
        fer("annotate", tmp_path / "nope", "--out", tmp_path / "r.parquet", "--model", lstm_checkpoint).exit_code == 2
    )
    assert fer("annotate", clips_dir, "--out", tmp_path / "r.txt", "--model", lstm_checkpoint).exit_code == 2
    bad = tmp_path / "bad.pt"
    bad.write_text("not weights")
    result = fer("annotate", clips_dir, "--out", tmp_path / "r.parquet", "--model", bad)
    assert result.exit_code == 2 and "bad.pt" in result.output


def _start(out, inputs, model, *extra):
    cmd = [
        sys.executable,
        "-m",
        "fercli.cli",
        "annotate",
        *map(str, inputs),
        "--out",
        str(out),
        "--model",
        str(model),
        *extra,
    ]
    # Ctrl-C's default action in the child even when this test runs where SIGINT is ignored (a
    # shell's background job): Python only turns SIGINT into KeyboardInterrupt if it starts at SIG_DFL.
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_first_part(proc, out, timeout=120):
    parts = out.with_name(out.name + ".parts")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if parts.exists() and any(parts.glob("*.parquet")):
            return
        time.sleep(0.05)
    pytest.fail(f"no finished video before the run ended: {proc.communicate()[0][-2000:]}")


@pytest.mark.parametrize("sig,workers", [(signal.SIGKILL, "1"), (signal.SIGINT, "0")])
def test_interrupted_run_keeps_finished_videos_and_resume_completes(
    tmp_path, clips_dir, clean_run, lstm_checkpoint, sig, workers
):
    _, clean_out = clean_run
    clean = read_table(clean_out)
    out = tmp_path / "r.parquet"
    inputs = [clips_dir]
    proc = _start(out, inputs, lstm_checkpoint, "--workers", workers)
    _wait_for_first_part(proc, out)
    proc.send_signal(sig)
    output = proc.communicate(timeout=60)[0].decode(errors="replace")
    if sig == signal.SIGINT:
        assert proc.returncode == 130, output[-3000:]
        partial = read_table(out)  # a whole, readable file holding the finished videos
        done = partial.video.unique()
        assert len(done) >= 1
        pd.testing.assert_frame_equal(
            partial.reset_index(drop=True), clean[clean.video.isin(done)].reset_index(drop=True)
        )
    else:
        assert not out.exists()  # killed before the merge: no half-written output
    proc = _start(out, inputs, lstm_checkpoint, "--resume")
    assert proc.wait(timeout=300) == 0
    pd.testing.assert_frame_equal(read_table(out), clean)


def test_bare_ray_flag_means_a_local_instance():
    from fercli.cli import bare_ray_means_local

    assert bare_ray_means_local(["annotate", "v/", "--out", "r.parquet", "--ray"]) == [
        "annotate",
        "v/",
        "--out",
        "r.parquet",
        "--ray",
        "local",
    ]
    assert bare_ray_means_local(["annotate", "v/", "--ray", "--out", "r.csv"])[2:4] == ["--ray", "local"]
    assert bare_ray_means_local(["annotate", "v/", "--ray", "auto"]) == ["annotate", "v/", "--ray", "auto"]


@pytest.mark.parametrize("address", ["local", "auto", "10.0.0.5:6379", "head-node.lab:6379", "ray://head:10001"])
def test_ray_addresses_are_kept(address):
    from fercli.cli import bare_ray_means_local

    assert bare_ray_means_local(["annotate", "v/", "--ray", address, "-o", "r.csv"])[2:4] == ["--ray", address]


@pytest.mark.parametrize("path", ["videos/", "videos", "clip.mp4", "/data/a.mkv"])
def test_a_path_after_bare_ray_is_an_input_not_an_address(path):
    from fercli.cli import bare_ray_means_local

    assert bare_ray_means_local(["annotate", "--ray", path, "--out", "r.parquet"]) == [
        "annotate",
        "--ray",
        "local",
        path,
        "--out",
        "r.parquet",
    ]


@pytest.mark.parametrize("verbose", [False, True])
def test_an_unexpected_crash_has_its_own_exit_code(monkeypatch, capsys, tmp_path, clips_dir, lstm_checkpoint, verbose):
    import fercli.cli
    import fercli.job.pipeline

    def crash(*args, **kwargs):
        raise RuntimeError("boom inside fer")

    monkeypatch.setattr(fercli.job.pipeline, "annotate", crash)
    argv = [
        "fer",
        "annotate",
        str(clips_dir / "odd.avi"),
        "--out",
        str(tmp_path / "r.csv"),
        "--model",
        str(lstm_checkpoint),
    ]
    code = fercli.cli.run(argv[1:] + (["-v"] if verbose else []))  # main() exits with it
    assert code == 3 not in (0, 1, 2, 130)
    err = capsys.readouterr().err
    assert "RuntimeError: boom inside fer" in err and ("Traceback" in err) == verbose


@pytest.mark.parametrize("command", [["annotate", "v/", "--out", "r.parquet"], ["train", "--data", "d", "--out", "o"]])
def test_unknown_device_exits_two_naming_it(command):
    result = fer(*command, "--device", "gpu")
    assert result.exit_code == 2 and "'gpu'" in result.output


def test_library_rejects_unknown_device():
    from fercli.core.devices import resolve_device
    from fercli.core.errors import FerError

    with pytest.raises(FerError, match="gpu"):
        resolve_device("gpu")
    assert str(resolve_device("cpu")) == "cpu"


@pytest.mark.parametrize("verbose", [False, True])
def test_litert_start_up_line_only_with_verbose(tmp_path, clips_dir, lstm_checkpoint, verbose):
    cmd = [sys.executable, "-m", "fercli.cli", "annotate", str(clips_dir / "odd.avi"), "--out", str(tmp_path / "r.csv")]
    cmd += ["--model", str(lstm_checkpoint)] + (["-v"] if verbose else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    noise = ("Created TensorFlow Lite XNNPACK delegate",)  # LiteRT, straight to file descriptor 2
    assert all((line in proc.stderr) == verbose for line in noise), proc.stderr
    assert "r.csv" in proc.stderr  # fer's own summary is still shown


_MAIN_WITH_HANDLER = """
import atexit, sys
atexit.register(lambda: print("handler ran", flush=True))
from fercli.cli import main
sys.argv = ["fer", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("args, code", [(["--help"], 0), (["annotate", "--no-such-option"], 2)])
def test_the_command_exits_with_its_code_after_the_exit_handlers(tmp_path, args, code):
    # `fer` leaves without the interpreter's teardown (runtime.exit_now): the exit code, every
    # line written to a pipe, and the program's atexit handlers must all survive that.
    proc = subprocess.run(
        [sys.executable, "-c", _MAIN_WITH_HANDLER, *args], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.rstrip().endswith("handler ran")
    if code == 0:
        assert "annotate" in proc.stdout
    else:
        assert "--no-such-option" in proc.stderr


@pytest.mark.parametrize("name", ["[bold]ok.mp4", "a[/x].mp4", "esc\x1b[31mred.mp4", "two\nlines.mp4"])
def test_file_names_are_printed_as_they_are(tmp_path, clips_dir, lstm_checkpoint, name):
    # A name is never read as rich markup nor sent to the terminal raw; the batch goes on.
    import shutil

    from fercli.core.errors import printable

    folder = tmp_path / "in"
    for path in (folder / name, folder / f"broken {name}"):  # "a[/x].mp4" is x].mp4 in a folder a[
        path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(clips_dir / "moving.mp4", folder / name)
    (folder / f"broken {name}").write_bytes(b"not a video")
    result = fer("annotate", folder, "--out", tmp_path / "r.csv", "--model", lstm_checkpoint)
    assert result.exit_code == 1, result.output  # one clip failed; no crash
    assert printable(name) in result.output and printable(f"broken {name}") in result.output
    assert "\x1b" not in result.output
    table = read_table(tmp_path / "r.csv")
    assert set(table.video) == {name}


def _leaf_commands(group, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (typer may carry its own click)
            yield from _leaf_commands(command, (*path, name))
        else:
            yield (*path, name)


@pytest.mark.parametrize("command", sorted(_leaf_commands(typer.main.get_command(app))))
def test_every_command_takes_verbose(command):
    # Errors say "run with -v"; every command must then accept it.
    result = runner.invoke(app, [*command, "-v", "--help"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "args",
    [
        ["weights", "download", "nosuch"],
        ["benchmark", "speed", "missing.mp4"],
        ["benchmark", "accuracy", "--data", "missing", "--model", "x"],
    ],
)
def test_verbose_really_turns_on_debug_logging(args, tmp_path, monkeypatch):
    import logging

    monkeypatch.chdir(tmp_path)
    logger = logging.getLogger("fercli")
    monkeypatch.setattr(logger, "level", logger.level)  # put back after the test
    runner.invoke(app, [*args, "-v"])
    assert logger.level == logging.DEBUG


def _file_size_limit(limit_bytes):
    def apply():  # in the child: a disk that takes no more than this per file (EFBIG, as ENOSPC)
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


@pytest.mark.parametrize("limit", [300])
def test_a_full_disk_is_one_line_naming_the_file_and_the_old_table_stays(tmp_path, clips_dir, lstm_checkpoint, limit):
    # 300 bytes: the first part cannot be written (3,000 let the parts through and stopped the
    # table, with the same message: tried by hand, not kept, for the suite's time).
    out = tmp_path / "r.parquet"
    out.write_bytes(b"the table of an earlier run")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fercli.cli",
            "annotate",
            str(clips_dir),
            "--out",
            str(out),
            "--model",
            str(lstm_checkpoint),
            "--overwrite",
        ],
        preexec_fn=_file_size_limit(limit),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error")]  # beside a warning that the table stays
    assert line.startswith(f"error: cannot write {tmp_path}") and "File too large" in line
    assert out.read_bytes() == b"the table of an earlier run"
    assert not (tmp_path / "r.parquet.lock").exists()


def test_error_lines_stay_whole_in_a_log_file(tmp_path, lstm_checkpoint):
    # stderr to a file, as an overnight batch logs it: rich wrapped records at 80 columns.
    folder = tmp_path / ("a_folder_with_a_long_name_" * 3)
    folder.mkdir()
    broken = folder / "truncated_recording_of_participant_17_session_2.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    log = tmp_path / "run.log"
    with log.open("w") as handle:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "fercli.cli",
                "annotate",
                str(broken),
                "--out",
                str(tmp_path / "r.csv"),
                "--model",
                str(lstm_checkpoint),
            ],
            stdout=subprocess.DEVNULL,
            stderr=handle,
            timeout=300,
        )
    assert done.returncode == 1
    lines = [line for line in log.read_text().splitlines() if str(broken) in line]
    assert len(lines) == 1 and lines[0].startswith("ERROR") and len(lines[0]) > 120, log.read_text()


def test_a_pickle_that_runs_code_as_model_is_one_line_and_never_run(tmp_path, clips_dir):
    import pickle

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    model = tmp_path / "evil.pt"
    model.write_bytes(pickle.dumps(Evil(), protocol=4))  # protocol 4: torch's unpickler warned twice
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fercli.cli",
            "annotate",
            str(clips_dir / "odd.avi"),
            "--out",
            str(tmp_path / "r.csv"),
            "--model",
            str(model),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(model) in lines[0], lines
    assert not marker.exists() and not (tmp_path / "r.csv").exists()


def test_ctrl_c_before_any_video_finished_says_nothing_was_written(tmp_path, clips_dir, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("fercli.job.pipeline.annotate", interrupted)
    out = tmp_path / "r.csv"
    result = fer("annotate", clips_dir / "odd.avi", "--out", out)
    assert result.exit_code == 130 and not out.exists()
    assert f"{out} was not written" in result.output and "--resume" not in result.output


def test_decoder_gpu_without_a_gpu_is_one_line_before_any_work(clips_dir, lstm_checkpoint, tmp_path):
    out = tmp_path / "r.csv"
    cmd = [
        sys.executable,
        "-m",
        "fercli.cli",
        "annotate",
        str(clips_dir / "odd.avi"),
        "--out",
        str(out),
        "--model",
        str(lstm_checkpoint),
        "--device",
        "cpu",
        "--decoder",
        "gpu",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and not out.exists()
    assert done.stderr.strip().count("\n") == 0 and "--decoder gpu: the model runs on the CPU" in done.stderr
    cmd[-1] = "tpu"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--decoder must be auto, cpu or gpu, not 'tpu'" in done.stderr
