import pandas as pd
import pytest

import fercli
from fercli.job.contract import AnnotateOptions
from fercli.tables.writers import read_table


@pytest.mark.requires_cuda
def test_cuda_run_matches_the_cpu_table(tmp_path, clips_dir, lstm_checkpoint):
    tables = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.parquet"
        model = fercli.load_model(lstm_checkpoint, device)
        fercli.annotate([clips_dir], out, options=AnnotateOptions(), model=model, device=device)
        tables[device] = read_table(out)
    cpu, cuda = tables["cpu"], tables["cuda"]
    assert cuda[["video", "second", "face"]].equals(cpu[["video", "second", "face"]])
    cols = ["valence_score", "arousal_score", "valence_conf", "arousal_conf"]
    pd.testing.assert_frame_equal(cuda[cols], cpu[cols], atol=0.05, check_dtype=False)
    assert (cuda.valence == cpu.valence).mean() > 0.9  # argmax may flip on near-ties


def annotate_on(device: str, clips_dir, checkpoint, out, **options) -> pd.DataFrame:
    model = fercli.load_model(checkpoint, device)
    fercli.annotate([clips_dir], out, options=AnnotateOptions(**options), model=model, device=device)
    return read_table(out)


@pytest.mark.requires_cuda
def test_worker_processes_beside_a_cuda_model_give_the_threads_table(tmp_path, clips_dir, lstm_checkpoint):
    # Worker processes decode and detect while the model holds the GPU in this process.
    threads = annotate_on("cuda", clips_dir, lstm_checkpoint, tmp_path / "t.parquet", workers=0, precision="fp32")
    workers = annotate_on("cuda", clips_dir, lstm_checkpoint, tmp_path / "w.parquet", workers=2, precision="fp32")
    keys = ["video", "second", "face"]
    pd.testing.assert_frame_equal(
        workers.sort_values(keys[:2]).reset_index(drop=True)[keys],
        threads.sort_values(keys[:2]).reset_index(drop=True)[keys],
    )
    cols = ["valence_score", "arousal_score"]
    pd.testing.assert_frame_equal(
        workers.sort_values(keys[:2]).reset_index(drop=True)[cols],
        threads.sort_values(keys[:2]).reset_index(drop=True)[cols],
        atol=1e-3,
        check_dtype=False,
    )


@pytest.mark.requires_cuda
def test_bf16_on_cuda_stays_near_fp32(tmp_path, clips_dir, frame_checkpoint):
    fp32 = annotate_on("cuda", clips_dir, frame_checkpoint, tmp_path / "a.parquet", precision="fp32")
    bf16 = annotate_on("cuda", clips_dir, frame_checkpoint, tmp_path / "b.parquet", precision="bf16")
    assert bf16[["video", "second", "face"]].equals(fp32[["video", "second", "face"]])
    for col in ("valence_score", "arousal_score"):
        assert (bf16[col] - fp32[col]).abs().max() < 0.25, col  # bf16 keeps 8 bits of mantissa


@pytest.mark.requires_cuda
def test_a_model_trained_on_cuda_with_amp_annotates_on_the_cpu(tmp_path, clips_dir):
    import synthetic_afew

    from fercli.training.loop import train
    from fercli.training.options import TrainOptions

    data = tmp_path / "afew"
    synthetic_afew.make_dataset(data, clips=6, frames=8, actors=3, seed=5)
    run = tmp_path / "run"
    train(
        TrainOptions(
            data, run, init="random", finetune=True, epochs=1, frames_fps=5, device="cuda", image_size=96, hidden=32
        )
    )
    table = annotate_on("cpu", clips_dir, run / "best.pt", tmp_path / "cpu.parquet")
    assert len(table) and table.loc[table.face, "valence"].notna().all()


@pytest.mark.requires_cuda
def test_amp_on_a_bf16_gpu_is_bf16():
    # fp16 overflowed on a random backbone (tests/test_training.py); Ampere and later have bf16.
    import torch

    from fercli.training.loop import amp_dtype

    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert amp_dtype(torch.device("cuda")) == expected
