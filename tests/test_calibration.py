"""Calibration's head step: A_ft's head carried onto B inside the calibration passes, A run once
with its gradient rows kept, equal to carrying the head first and calibrating after."""

import numpy as np
import pytest
import torch

from conftest import nudged, tiny_classifier
from tasklift.timing import Timings
from tasklift.transfer import Transfer, get_method
from tasklift.transfer import calibration as cal
from tasklift.transfer.head import classifier_setup

N, BATCH = 24, 8


def prepared():
    """A classifier-transfer setup (A_ft's head not yet on B), as `Transfer.fit` makes it."""
    a = nudged(tiny_classifier("bert"), seed=3, scale=0.2)
    b = nudged(tiny_classifier("bert", seed=1), seed=4, scale=0.2).bert  # another base
    X = {"input_ids": torch.randint(1, 50, (N, 8), generator=torch.Generator().manual_seed(1))}
    est = Transfer(a, nudged(a), b)
    est.timings_, est.max_length_ = Timings(), None
    return classifier_setup(est, est.finetuned, None, X, None)


def run(prep, head: bool, **kw) -> tuple[dict, int]:
    """calibrate's BiCo statistics (with the head step, or after it) and A's forward count."""
    a, b, loss = prep["source"], prep["target"], prep["loss"]
    batches = [np.arange(i, i + BATCH) for i in range(0, N, BATCH)]
    if not head:  # the head first, alone, as fit did before the step joined the passes
        step = prep["head_step"]
        first = {step.target: step.source}
        stats = cal.calibrate(a, b, first, batches, loss, signals=("input",), token="cls")
        step.align(stats[(step.target, "input")])
    calls = []
    hook = a.register_forward_hook(lambda *_: calls.append(1))
    try:
        stats = cal.calibrate(a, b, prep["pairs"], batches, loss,
                              signals=get_method("bico").signals,
                              head=prep["head_step"] if head else None, **kw)  # fmt: skip
    finally:
        hook.remove()
    return stats, len(calls)


@pytest.fixture(scope="module")
def reference():
    prep = prepared()
    stats, calls = run(prep, head=False)
    assert calls == N // BATCH  # A once per batch here, after the head's own pass
    return stats, {k: v.clone() for k, v in prep["target"].state_dict().items()}


def one_batch(monkeypatch) -> int:
    """Bytes of A's gradient rows of one batch, as calibrate counts them."""
    seen = []
    real = cal._bytes
    monkeypatch.setattr(cal, "_bytes", lambda got: seen.append(real(got)) or seen[-1])
    run(prepared(), head=True)
    monkeypatch.undo()
    assert len(set(seen)) == 1 and seen[0] > 0
    return seen[0]


@pytest.mark.parametrize("kept", [N // BATCH, 1, 0])
def test_head_step_in_the_passes_equals_the_head_first(reference, kept, monkeypatch):
    """With the head step A runs once per batch whose gradient rows fit `keep_bytes` (again
    in the second pass for the others), and B's head and every statistic are those of
    carrying the head first, then calibrating: B's gradients flow through the carried head."""
    stats_ref, head_ref = reference
    room = {N // BATCH: cal.KEEP_BYTES, 1: int(1.5 * one_batch(monkeypatch)), 0: 0}[kept]
    prep = prepared()
    stats, calls = run(prep, head=True, keep_bytes=room)
    assert calls == 2 * N // BATCH - kept
    for k, v in prep["target"].state_dict().items():
        torch.testing.assert_close(v, head_ref[k], rtol=1e-6, atol=1e-7)
    assert set(stats) == set(stats_ref) and any(sig == "grad_output" for _, sig in stats)
    for key, s in stats.items():
        assert s.n == stats_ref[key].n
        np.testing.assert_allclose(s.xy, stats_ref[key].xy, rtol=1e-5, atol=1e-6 * abs(s.xy).max())


def test_head_step_alone_runs_forward_passes_only(reference):
    """Methods without calibration signals (naive, GradFix) still carry the head: A and B
    forward once per batch, no backward, no statistics, B's head as the full calibration's."""
    prep = prepared()
    a, b = prep["source"], prep["target"]
    before = b.classifier.weight.clone()
    grads = []

    def loss(model, idx):
        grads.append(torch.is_grad_enabled())
        return prep["loss"](model, idx)

    batches = [np.arange(i, i + BATCH) for i in range(0, N, BATCH)]
    got = cal.calibrate(a, b, {}, batches, loss, signals=(), head=prep["head_step"])
    assert got == {} and grads == [False] * (2 * N // BATCH)
    assert not torch.equal(b.classifier.weight, before)
    for k, v in b.state_dict().items():
        torch.testing.assert_close(v, reference[1][k], rtol=1e-6, atol=1e-7)


class Encoder(torch.nn.Module):
    """Token embeddings, one nn.TransformerEncoderLayer (an MHA inside), a linear head."""

    def __init__(self, width: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(50, width)
        self.layer = torch.nn.TransformerEncoderLayer(width, 2, 2 * width, dropout=0.0,
                                                      batch_first=True)  # fmt: skip
        self.classifier = torch.nn.Linear(width, 3)

    def forward(self, x):
        return self.classifier(self.layer(self.emb(x))[:, 0])


def test_attention_alone_is_calibrated_outside_torch_fast_path():
    """An MHA paired alone, its layer run without gradients (B's first pass): torch's fused
    encoder-layer path would skip MHA's forward and its statistics; it is switched off."""
    a, b = Encoder(8, 0).eval(), Encoder(12, 1).eval()
    X = torch.randint(0, 50, (16, 5), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (16,))
    loss = lambda m, idx: torch.nn.functional.cross_entropy(m(X[idx]), y[idx])  # noqa: E731
    batches = [np.arange(i, i + 4) for i in range(0, 16, 4)]
    pairs, sigs = {"layer.self_attn": "layer.self_attn"}, get_method("bico").signals
    step = cal.HeadStep("classifier", "classifier", lambda stats: None)
    got = cal.calibrate(a, b, pairs, batches, loss, signals=sigs, head=step)
    want = cal.calibrate(a, b, pairs, batches, loss, signals=sigs)
    assert set(got) == set(want) == {("layer.self_attn", s) for s in sigs}
    for key, s in got.items():
        np.testing.assert_allclose(s.xy, want[key].xy, rtol=1e-5, atol=1e-7)
    assert torch.backends.mha.get_fastpath_enabled()  # restored


def test_rows_shared_by_several_signals_are_multiplied_once(monkeypatch):
    """A block's q, k and v read one tensor (and a norm's output is the next layer's input):
    their statistics are accumulated once per batch and merged into each, equal to
    accumulating each alone."""
    from tasklift.stats import GramStats

    prep = prepared()
    a, b, loss = prep["source"], prep["target"], prep["loss"]
    batches = [np.arange(i, i + BATCH) for i in range(0, N, BATCH)]
    sigs = get_method("bico").signals
    calls = []
    real = GramStats.update
    monkeypatch.setattr(GramStats, "update", lambda s, *x, **k: calls.append(1) or real(s, *x, **k))
    shared = cal.calibrate(a, b, prep["pairs"], batches, loss, signals=sigs)
    n_shared = len(calls)
    counter = iter(range(10**9))
    monkeypatch.setattr(cal, "_ident", lambda t: next(counter))  # nothing shared
    alone = cal.calibrate(a, b, prep["pairs"], batches, loss, signals=sigs)
    saved = len(calls) - 2 * n_shared  # alone's products less shared's (both counted)
    # per block and batch at least: k's and v's inputs (q's), the FFN's (the norm's output)
    assert saved >= 3 * 2 * len(batches)  # tiny BERT: 2 blocks
    assert set(shared) == set(alone)
    for key, s in alone.items():
        for name in ("xy", "sx", "sy", "n"):
            np.testing.assert_array_equal(getattr(shared[key], name), getattr(s, name))


def test_head_layers_in_the_calibrated_pairs_are_refused():
    """The head step carries the head layers; calibrating them too would read B's blank head."""
    prep = prepared()
    step = prep["head_step"]
    pairs = {**prep["pairs"], step.target: step.source}
    with pytest.raises(ValueError, match="carried by the head step, not calibrated"):
        cal.calibrate(prep["source"], prep["target"], pairs, [np.arange(4)], prep["loss"],
                      head=step)  # fmt: skip


def test_gradient_rows_the_loss_never_reads_are_not_multiplied(monkeypatch):
    """A classifier's last block reads its first token only: the other tokens' gradient rows
    are zero and left out of the products, with the statistics unchanged."""
    from tasklift import stats as st

    prep = prepared()
    a, b, loss = prep["source"], prep["target"], prep["loss"]
    batches = [np.arange(i, i + BATCH) for i in range(0, N, BATCH)]
    sigs = get_method("bico").signals
    rows, real = [], st._live
    monkeypatch.setattr(st, "_live", lambda x, y: rows.append(real(x, y)) or rows[-1])
    skipped = cal.calibrate(a, b, prep["pairs"], batches, loss, signals=sigs)
    live = [int(m.sum()) for m in rows if m is not None]
    assert BATCH in live  # the last block's first tokens alone (one row per input)
    monkeypatch.setattr(st, "_live", lambda x, y: None)  # every row multiplied
    every = cal.calibrate(a, b, prep["pairs"], batches, loss, signals=sigs)
    assert set(skipped) == set(every)
    for key, s in every.items():
        np.testing.assert_allclose(skipped[key].xy, s.xy, rtol=1e-5, atol=1e-6 * abs(s.xy).max())
        np.testing.assert_array_equal(skipped[key].sy, s.sy)
