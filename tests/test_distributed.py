"""Sharded fitting over 2 CPU processes (gloo) gives the statistics and W of one process."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tasklift.maps import LeastSquaresMap, RidgeCVMap
from tasklift.stats import GramStats
from tasklift.taskmatrix import TaskMatrix


def _worker(rank, world, init_file, X, Y, out):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rows = [np.arange(0, 70), np.arange(70, 70)][rank]  # rank 1 gets an empty shard
        s = GramStats(folds=3, qr=True)
        if len(rows):
            s.update(X[rows], Y[rows], index=rows)
        s.all_reduce()
        both = GramStats(qr=True).update(*[(X[:45], Y[:45]), (X[45:], Y[45:])][rank])
        both.all_reduce()  # both ranks hold rows: their QR factors are merged
        if rank == 1:
            torch.save(s.state_dict(), out)
            torch.save(both.state_dict(), str(out) + ".both")
    finally:
        dist.destroy_process_group()


def test_all_reduce_equals_single_pass_even_with_an_empty_shard(tmp_path):
    r = np.random.default_rng(0)
    X, Y = r.normal(size=(70, 6)), r.normal(size=(70, 3))
    out = tmp_path / "stats.pt"
    mp.spawn(_worker, args=(2, tmp_path / "init", X, Y, out), nprocs=2, join=True)
    got = GramStats.from_state_dict(torch.load(out))
    ref = GramStats(folds=3, qr=True).update(X, Y)
    for k in range(3):
        np.testing.assert_allclose(got.fold(k).xx, ref.fold(k).xx, rtol=1e-12)
    np.testing.assert_allclose(
        RidgeCVMap(alphas=[0.0, 0.1]).fit_stats(got).coef_,
        RidgeCVMap(alphas=[0.0, 0.1]).fit_stats(ref).coef_,
        rtol=1e-10,
    )
    both = GramStats.from_state_dict(torch.load(str(out) + ".both"))
    np.testing.assert_allclose(
        LeastSquaresMap(solver="qr").fit_stats(both).coef_,
        np.linalg.lstsq(X, Y, rcond=None)[0].T,
        rtol=1e-10,
    )
    np.testing.assert_allclose(  # the streamed QR is gathered and merged too
        LeastSquaresMap(solver="qr").fit_stats(got).coef_,
        LeastSquaresMap(solver="qr").fit_stats(ref).coef_,
        rtol=1e-10,
    )


@pytest.mark.skipif(
    shutil.which("torchrun") is None
    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
    reason="torchrun not installed",
)
def test_torchrun_fit_matches_one_process(text_task, tmp_path):
    root = text_task
    # Batch size 1: no padding, so both runs see bit-identical embeddings (otherwise batches of
    # other lengths differ by float32 rounding, which this tiny model's near-singular layers
    # amplify); what remains is the order of float64 summation.
    args = [
        str(root / "base"),
        str(root / "ft"),
        str(root / "data.csv"),
        "--text-key",
        "sentence",
        "--alpha",
        "auto",
        "--quiet",
        "--batch-size",
        "1",
    ]
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same threads, same float32 rounding
    runs = {
        "two": [
            os.path.join(bin_dir, "torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "-m",
            "tasklift.cli",
        ],
        "one": [sys.executable, "-m", "tasklift.cli"],
    }
    for name, launcher in runs.items():
        cmd = [*launcher, "fit", *args, "-o", str(tmp_path / f"{name}.safetensors")]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    two = TaskMatrix.load(tmp_path / "two.safetensors")
    one = TaskMatrix.load(tmp_path / "one.safetensors")
    assert two.layer_ == one.layer_ and two.alphas_ == one.alphas_
    for i in one.maps_:  # norm-wise: this tiny model's layers have condition numbers ~1e11
        a, b = two.maps_[i].coef_, one.maps_[i].coef_
        assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b), i
