"""Sharded fitting over 2 CPU processes (gloo) gives the statistics and W of one process; a
sharded transfer (calibration, head alignment, label-free targets, GradFix votes, the map
cache) gives the τ_B of one process, and only rank 0 writes."""

import json
import os
import shutil
import string
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import WORDS, nudged, permuted, tiny_classifier, tiny_tokenizer, token_task
from tasklift.distributed import everywhere
from tasklift.maps import LeastSquaresMap, RidgeCVMap
from tasklift.stats import GramStats
from tasklift.taskmatrix import TaskMatrix
from tasklift.transfer import Transfer
from test_lm import WordTokenizer, _GenTokenizer, tiny_lm
from test_lora import _adapter
from test_transfer import _piece_tokenizer, trained_like


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
        agreed = everywhere([True, rank == 0, False])  # what every process holds
        if rank == 1:
            torch.save(torch.tensor(agreed), str(out) + ".agreed")
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
    assert torch.load(str(out) + ".agreed").tolist() == [True, False, False]
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


needs_torchrun = pytest.mark.skipif(
    shutil.which("torchrun") is None
    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
    reason="torchrun not installed",
)


def _one_and_two(port: int, args) -> None:
    """`tasklift *args(name)` under torchrun as 2 CPU processes (name "two") and as one ("one")."""
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same threads, same float32 rounding
    torchrun = [os.path.join(bin_dir, "torchrun"), "--nproc_per_node", "2"]
    runs = {
        "two": [*torchrun, "--master_port", str(port), "-m", "tasklift.cli"],
        "one": [sys.executable, "-m", "tasklift.cli"],
    }
    for name, launcher in runs.items():
        done = subprocess.run(
            [*launcher, *args(name)], capture_output=True, text=True, env=env, timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]


@needs_torchrun
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
    _one_and_two(29533, lambda name: ["fit", *args, "-o", str(tmp_path / f"{name}.safetensors")])
    two = TaskMatrix.load(tmp_path / "two.safetensors")
    one = TaskMatrix.load(tmp_path / "one.safetensors")
    assert two.layer_ == one.layer_ and two.alphas_ == one.alphas_
    for i in one.maps_:  # norm-wise: this tiny model's layers have condition numbers ~1e11
        a, b = two.maps_[i].coef_, one.maps_[i].coef_
        assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b), i


_CHARS = list(string.ascii_letters + string.digits)  # varied tokens: no degenerate directions
PROMPTS = ["".join(np.random.default_rng(i).choice(_CHARS, 12)) + ":" for i in range(21)]
TARGETS = [" yes" if i % 3 else " no" for i in range(21)]


def _models(root) -> None:
    """Folders of three pairs: BERT classifier A_ft -> another BERT; Qwen2 32 wide -> 48 wide
    and 3 layers (with two LoRA adapters of A); Llama -> a wider Llama of another tokenizer."""
    a = trained_like(tiny_classifier("bert"))
    a.bert.save_pretrained(root / "enc_a")
    nudged(a).save_pretrained(root / "enc_ft")
    permuted(a, "bert").bert.save_pretrained(root / "enc_b")  # maps well determined: see below
    tiny_lm("qwen2").save_pretrained(root / "lm_a")
    nudged(tiny_lm("qwen2")).save_pretrained(root / "lm_ft")
    tiny_lm("qwen2", seed=1, hidden=48, layers=3, heads=6).save_pretrained(root / "lm_b")
    for i in range(2):
        _adapter(tiny_lm("qwen2"), root / f"task{i}", r=2, seed=10 + i)
    words = tiny_tokenizer([*WORDS, ",", "!"])
    wide = tiny_lm("llama", seed=1, hidden=48)
    for name, model, tok in (("w_a", tiny_lm("llama"), words),
                             ("w_ft", nudged(tiny_lm("llama")), words),
                             ("w_b", wide, _piece_tokenizer())):  # fmt: skip
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)


def _transfers(root, tag: str) -> dict:
    """{case: τ_B, its scale and validation scores} of each transfer; each is saved to
    root/<case>.<tag> (but the one with a stand-in tokenizer) and the adapters moved to
    root/moved.<tag> (cache root/cache.<tag>)."""
    # 128 inputs: the last FFN (64 units) sees a gradient at [CLS] only; 8 batches, 4 a rank;
    # directions below 1e-4 of the largest are round-off here (see the test's docstring)
    X, y = token_task(128, seed=1)
    X_val, y_val = token_task(20, seed=2)
    enc = dict(source=root / "enc_a", finetuned=root / "enc_ft", target=root / "enc_b",
               batch_size=16, scales=(0.5, 1.0), tie_break=1e-4, stats_dtype="float64")  # fmt: skip
    lm = dict(source=root / "lm_a", finetuned=root / "lm_ft", target=root / "lm_b",
              processor=_GenTokenizer(), batch_size=4, max_new_tokens=3,
              scales=(0.5, 1.0), stats_dtype="float64")  # fmt: skip
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 5)) for _ in range(10)]
    answers = [" " + " ".join(rng.choice(WORDS, 2)) for _ in range(10)]
    word = dict(source=root / "w_a", finetuned=root / "w_ft", target=root / "w_b", token="word",
                scales=(1.0,), batch_size=4, stats_dtype="float64")  # fmt: skip
    cases = {
        "encoder-passes": (Transfer(**enc, max_stats_gb=1e-9), (X, y),
                           dict(X_val=X_val, y_val=y_val)),
        "gradfix": (Transfer(**enc, method="gradfix"), (X, y), {}),
        "lm-label-free-centred": (Transfer(**lm, center=True), (PROMPTS,),
                          dict(X_val=PROMPTS[:6], y_val=TARGETS[:6])),
        "lm-words": (Transfer(**word), (texts, answers), {}),
    }  # fmt: skip
    out = {}
    for name, (t, args, kw) in cases.items():
        t.fit(*args, **kw)
        if t.processor is None:  # the stand-in tokenizer cannot be saved
            t.save(root / f"{name}.{tag}")
        out[name] = (t.task_vector_.deltas, t.scale_, t.val_scores_)
    t = Transfer(root / "lm_a", None, root / "lm_b", processor=WordTokenizer(),
                 stats_dtype="float64")  # fmt: skip
    t.move_adapters([root / "task0", root / "task1"], PROMPTS, TARGETS,
                    out=root / f"moved.{tag}", map_cache=root / f"cache.{tag}")  # fmt: skip
    return out


def _transfer_worker(rank, world, root):
    torch.set_num_threads(1)  # as the single process: the same float32 kernels
    dist.init_process_group("gloo", init_method=f"file://{root}/init", rank=rank, world_size=world)
    try:
        torch.save(_transfers(root, str(rank)), root / f"taus.{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_a_transfer_over_two_processes_equals_one_and_only_rank_0_writes(tmp_path):
    """BiCo (centred, in passes: head alignment and statistics reduced), GradFix (votes
    reduced), a label-free LM (greedy targets generated in shares), words paired across
    tokenizers, and adapters moved through the map cache: τ_B of 2 gloo processes is the same
    on both ranks and equals 1 process (the LMs to 1e-6 of its largest entry); rank 1
    writes nothing. Every case accumulates float64 statistics: the mechanism is checked at a
    precision where the order of summation does not show.

    The encoder cases equal one process only up to round-off as their conditioning amplifies
    it: B's carried-over pooler differs by one float32 ulp with the order of summation, and the
    permuted BERT's cross-covariances have singular values all the way down, where R moves by
    about ulp / σ: at a cutoff of 1e-6 of the largest τ_B moved by 3e-4 or 1.6e-3 of
    its largest entry depending on the BLAS, so the BERT cases cut at 1e-4 (1.4e-6; 1e-5
    allowed). GradFix's majority vote flips where an entry's votes are one from a tie (0.1% of
    entries here, 1% allowed; a vote over half of the examples flips 15%)."""
    from safetensors.torch import load_file

    torch.set_num_threads(1)  # as each worker: the same float32 rounding
    _models(tmp_path)
    mp.spawn(_transfer_worker, args=(2, tmp_path), nprocs=2, join=True)
    one = _transfers(tmp_path, "one")
    ranks = [torch.load(tmp_path / f"taus.{r}.pt", weights_only=False) for r in range(2)]
    worst, flipped = {}, {}
    for name, (deltas, scale, scores) in one.items():
        for got in ranks:
            assert got[name][1:] == (scale, scores), name  # the same scale chosen
            assert got[name][0].keys() == deltas.keys() and deltas, name
            for k in deltas:
                torch.testing.assert_close(got[name][0][k], ranks[0][name][0][k], rtol=0, atol=0)
        two = ranks[0][name][0]
        top = max(float(v.abs().max()) for v in deltas.values())
        worst[name] = max(float((two[k] - v).abs().max()) for k, v in deltas.items()) / top
        flipped[name] = sum(int(((two[k] != 0) != (v != 0)).sum()) for k, v in deltas.items())
        flipped[name] /= sum(v.numel() for v in deltas.values())
        assert not (tmp_path / f"{name}.1").exists()
    assert (tmp_path / "lm-words.0").is_dir() and (tmp_path / "gradfix.0").is_dir()
    print("max |tau_B(2 processes) - tau_B(1 process)| / max |tau_B|:", worst)
    print("share of GradFix's entries kept by one and dropped by the other:", flipped["gradfix"])
    assert worst["lm-label-free-centred"] <= 1e-6 and worst["lm-words"] <= 1e-6, worst
    assert worst["encoder-passes"] <= 1e-5 and flipped["gradfix"] <= 0.01, (worst, flipped)
    for task in ("task0", "task1"):
        moved, want = (load_file(tmp_path / f"moved.{t}" / task / "adapter_model.safetensors")
                       for t in ("0", "one"))  # fmt: skip
        assert moved.keys() == want.keys()
        for k, v in want.items():
            torch.testing.assert_close(moved[k], v, rtol=0, atol=1e-6)
    assert any((tmp_path / "cache.0").glob("*.json"))
    assert not (tmp_path / "moved.1").exists() and not (tmp_path / "cache.1").exists()


@needs_torchrun
def test_torchrun_transfer_runs_and_rank_0_reports(text_task, tmp_path):
    """`tasklift transfer` under torchrun (2 gloo processes) writes one report and model, and
    chooses the scale and scores as one process does, and the same τ_B to 1e-4 of its largest
    entry at the default float32 statistics (6.7e-6 measured: the order of float32 summation;
    float64 statistics hold 1e-6, the test above); directions no calibration signal reaches,
    such as positions past the texts' length, are mapped to zero, not to a basis that float
    summation order picks."""
    from safetensors.torch import load_file

    root, rows_of = text_task, ("two", "one")
    args = [str(root / p) for p in ("base", "ft", "base", "data.csv")]  # A_ft's skill onto A
    args += ["--text-key", "sentence", "--methods", "bico", "--calib", "128", "--val", "40",
             "--batch-size", "16", "--quiet"]  # fmt: skip
    _one_and_two(29534, lambda name: ["transfer", *args, "-o", str(tmp_path / name)])
    rows = [json.loads((tmp_path / n / "results.json").read_text())["rows"] for n in rows_of]
    bico = [
        next((r["scale"], r["val_accuracy"]) for r in got if r["method"] == "bico") for got in rows
    ]
    assert bico[0] == bico[1]
    two, one = (load_file(tmp_path / n / "model" / "task_vector.safetensors") for n in rows_of)
    top = max(float(v.abs().max()) for v in one.values())
    assert two.keys() == one.keys() and one
    gap = max(float((two[k] - v).abs().max()) for k, v in one.items()) / top
    print("max |tau_B(2 processes) - tau_B(1 process)| / max |tau_B|:", gap)
    assert gap <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # no rank's leftovers


def test_a_model_split_by_device_map_calibrates_as_a_whole_one(tmp_path):
    """accelerate's device_map: B loaded with device_map="auto" (one CPU: not split) gives the
    same τ_B; B split between memory and disk (accelerate's hooks stream layers 1-2 in per
    forward) gives the same cross-covariances, gradients included; Transfer refuses such an
    offloaded B (τ_B is added to weights that are not there) in one line."""
    import transformers as tf

    from tasklift.transfer import calibrate, match_modules
    from tasklift.transfer.lm import lm_encode, lm_loss

    _models(tmp_path)
    kw = dict(processor=WordTokenizer(), scales=(1.0,), batch_size=8)
    want = Transfer(tmp_path / "lm_a", tmp_path / "lm_ft", tmp_path / "lm_b", **kw)
    want = want.fit(PROMPTS, TARGETS).task_vector_.deltas
    auto = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "lm_b", device_map="auto")
    got = Transfer(tmp_path / "lm_a", tmp_path / "lm_ft", auto, **kw).fit(PROMPTS, TARGETS)
    for k, v in want.items():
        torch.testing.assert_close(got.task_vector_.deltas[k], v, rtol=0, atol=1e-6)
    split = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
             "model.layers.2": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu",
             "lm_head": "cpu"}  # fmt: skip
    load = tf.AutoModelForCausalLM.from_pretrained
    a, b = load(tmp_path / "lm_a"), load(tmp_path / "lm_b")
    far = load(tmp_path / "lm_b", device_map=split, offload_folder=tmp_path / "offload")
    assert far.model.layers[1].mlp.up_proj.weight.device.type == "meta"  # on disk
    tok = WordTokenizer()

    def loss(model, idx):
        rows = slice(idx[0], idx[-1] + 1)
        return lm_loss(model, lm_encode(PROMPTS[rows], TARGETS[rows], tok, max_length=64))

    batches = [np.arange(i, min(i + 8, len(PROMPTS))) for i in range(0, len(PROMPTS), 8)]
    pairs = match_modules(a, b)
    whole, parts = (calibrate(a, m, pairs, batches, loss) for m in (b, far))
    assert whole.keys() == parts.keys()
    for key, s in whole.items():
        # the split layers' outputs are captured (their weights are on disk), the whole
        # model's mapped from its inputs' statistics: equal to float32 round-off
        out = key[1] == "output"
        tol = dict(rtol=0, atol=1e-6 * np.abs(s.xy).max()) if out else dict(rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(parts[key].xy, s.xy, **tol, err_msg=str(key))
    with pytest.raises(ValueError, match="offloaded to cpu or disk"):
        Transfer(tmp_path / "lm_a", tmp_path / "lm_ft", far, **kw).fit(PROMPTS, TARGETS)
