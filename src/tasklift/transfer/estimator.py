"""`Transfer`: carry a fine-tuned model's skill onto another base model with no training."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from torch import nn
from tqdm.auto import tqdm

from .. import __version__
from .._estimator import as_labels, check_fitted, recorded, scored
from ..data import is_texts, num_items, take
from ..evaluate import accuracy
from ..io import atomic_dir, check_output, write_text
from ..maps import ProcrustesMap
from ..models import backbone, classifier_like, encode, load_backbone, load_model
from ..taskvector import TaskVector
from .calibration import calibrate, word_pooling
from .head import head_linears, transport_head
from .methods import SCALES, get_method
from .pairing import head_pair, match_modules
from .solve import POST_STEPS, TIE_BREAK, solve_maps, transport

__all__ = ["Transfer"]

_SETTINGS = "tasklift_transfer.json"


class Transfer(ClassifierMixin, BaseEstimator):
    """Carry A_ft's skill (A = `source`, A_ft = `finetuned`) onto `target` (B): BiCo or a baseline.

    `fit` computes τ_A = A_ft − A, carries A_ft's head onto B's features, calibrates A and B on a
    few inputs, moves τ_A into B's coordinates with the chosen method and picks the task-vector
    scale on a validation split. The result is a classifier of B's architecture: `model_`.

    Args:
        source, finetuned, target: checkpoint folders or models (A and B may be backbones or
            classifiers; A_ft must be a classifier).
        method: a name of `tasklift.transfer.METHODS` ("bico", "activation", "gradient",
            "permutation", "naive", "gradfix", "gradfix-mean").
        token: calibration token pairing: "all", "cls", "mean", or "word" (texts whose
            tokenizers differ: each word's tokens averaged, words matched by characters).
        scales: task-vector scales tried on the validation split (1 without one).
        tie_break: singular values of a side's first cross-covariance at or below this fraction
            of the largest are settled by its later signals (see `solve.TIE_BREAK`).
        center: align centred covariances (means removed) rather than raw second moments.
        block_map: {target block: source block}; default proportional depth.
        processor: tokenizer / image processor for both models (default: each model's own).

    Learned: `model_` (B + scale_ · τ_B), `task_vector_` (τ_B), `target_model_` (B with the
    carried head), `scale_`, `val_scores_` {scale: accuracy}, `pairs_`, `classes_`.

    Example:
        >>> t = Transfer(source="a", finetuned="a_ft", target="b", method="bico")
        >>> t.fit(X_cal, y_cal, X_val=X_val, y_val=y_val).score(X_test, y_test)
        >>> t.save("b_transferred/"); Transfer.load("b_transferred/")
    """

    def __init__(
        self,
        source=None,
        finetuned=None,
        target=None,
        *,
        method: str = "bico",
        token: str = "all",
        scales: Sequence[float] = SCALES,
        tie_break: float = TIE_BREAK,
        center: bool = False,
        block_map: Mapping[int, int] | None = None,
        batch_size: int = 16,
        max_length: int = 128,
        device: str = "auto",
        dtype: str = "auto",
        progress: bool = False,
        processor=None,
    ) -> None:
        self.source, self.finetuned, self.target = source, finetuned, target
        self.method, self.token, self.scales = method, token, scales
        self.tie_break, self.center, self.block_map = tie_break, center, block_map
        self.batch_size, self.max_length, self.progress = batch_size, max_length, progress
        self.device, self.dtype, self.processor = device, dtype, processor

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def _load(self, src, head: bool):
        model, proc = load_model(src, head=head, device=self.device, dtype=self.dtype)
        return model, self.processor if self.processor is not None else proc

    def _batches(self, n: int, desc: str):
        idx = [np.arange(i, min(i + self.batch_size, n)) for i in range(0, n, self.batch_size)]
        return tqdm(idx, desc=desc, disable=not self.progress, leave=False)

    def _logits(self, model: nn.Module, X, processor) -> torch.Tensor:
        dev, out = next(model.parameters()).device, []
        with torch.no_grad():
            for idx in self._batches(num_items(X), "predict"):
                batch = encode(take(X, idx), processor, max_length=self.max_length)
                out.append(model(**{k: v.to(dev) for k, v in batch.items()}).logits.float().cpu())
        return torch.cat(out)

    def fit(self, X, y=None, *, X_val=None, y_val=None) -> Transfer:
        """Calibrate on X (~128 inputs) and labels y (A_ft's own predictions without), transport
        τ_A, and choose the scale on (X_val, y_val).

        Raises:
            ValueError: unknown method, missing models, empty calibration set, heads or shapes
                that cannot be carried over.
        """
        method = get_method(self.method)
        if None in (self.source, self.finetuned, self.target):
            raise ValueError("Transfer needs source=, finetuned= and target= (folders or models)")
        n = num_items(X)
        if n == 0:
            raise ValueError("the calibration set is empty; pass some inputs (about 128)")
        a_ft, proc_a = self._load(self.finetuned, head=True)
        head = head_linears(a_ft)
        a, _ = self._load(self.source, head=False)
        b, proc_b = self._load(self.target, head=False)
        self.processor_ = proc_b
        head, head_b = head_pair(a_ft, b, head)  # other names across families
        a_cal = copy.deepcopy(a_ft)  # A's own weights under A_ft's head: the calibration model
        load_backbone(a_cal, backbone(a))
        mods_cal, mods_ft = dict(a_cal.named_modules()), dict(a_ft.named_modules())
        for name in head:  # a head layer inside the backbone (BERT's pooler) stays A_ft's
            mods_cal[name].load_state_dict(mods_ft[name].state_dict())
        b_cls = classifier_like(a_ft, backbone(b))
        if y is None:
            y = self._logits(a_ft, X, proc_a).argmax(-1).numpy()
        labels = torch.from_numpy(as_labels(y, n))
        procs = {id(a_cal): proc_a, id(b_cls): proc_b}

        def loss_fn(model, idx):
            batch = encode(take(X, idx), procs[id(model)], max_length=self.max_length)
            dev = next(model.parameters()).device
            return model(
                **{k: v.to(dev) for k, v in batch.items()}, labels=labels[idx].to(dev)
            ).loss

        # A_ft's head onto B first, so B's calibration gradients flow through the task's head
        stats = calibrate(
            a_cal,
            b_cls,
            {head_b[0]: head[0]},
            self._batches(n, "align head"),
            loss_fn,
            signals=("input",),
            token="cls",
        )
        r_head = ProcrustesMap().fit_stats(stats[(head_b[0], "input")]).coef_.T  # (d_A, d_B)
        transport_head(a_ft, b_cls, torch.from_numpy(r_head).float(), head, head_b)
        tv = TaskVector.from_state_dicts(a_cal.state_dict(), a_ft.state_dict())
        tv = TaskVector({k: v for k, v in tv.deltas.items() if k.rsplit(".", 1)[0] not in head})
        pairs = {
            t: s
            for t, s in match_modules(a_cal, b_cls, self.block_map).items()
            if t not in head_b and s not in head
        }
        stats, words = None, None
        if self.token == "word":
            if not is_texts(X):
                raise ValueError("token='word' pairs the words of raw texts: pass X as strings")
            words = lambda idx: word_pooling(take(X, idx), (proc_a, proc_b), self.max_length)  # noqa: E731
        if method.signals:
            stats = calibrate(
                a_cal,
                b_cls,
                pairs,
                self._batches(n, f"calibrate ({method.name})"),
                loss_fn,
                signals=method.signals,
                token=self.token,
                words=words,
            )
        maps = solve_maps(
            a_cal, b_cls, pairs, stats, method, tie_break=self.tie_break, center=self.center
        )
        tv_b = transport(tv, a_cal, b_cls, pairs, maps)
        if method.post is not None:
            tv_b = POST_STEPS[method.post](tv_b, b_cls, self._batches(n, method.post), loss_fn)
        self.pairs_, self.task_vector_, self.target_model_ = pairs, tv_b, b_cls
        self.source_params_, self.moved_params_ = len(tv.deltas), len(tv_b.deltas)
        self.val_scores_ = {}
        if X_val is not None:
            yv = as_labels(y_val, num_items(X_val))
            for s in self.scales:
                model = tv_b.apply_to(b_cls, scale=s)
                self.val_scores_[float(s)] = accuracy(self._logits(model, X_val, proc_b), yv)
        # the best validation accuracy; ties go to the scale nearest 1 (the plain transfer)
        scores = self.val_scores_ or {1.0: 0.0}
        self.scale_ = max(scores, key=lambda s: (scores[s], -abs(s - 1.0)))
        self.model_ = tv_b.apply_to(b_cls, scale=self.scale_)
        self.classes_ = np.arange(b_cls.config.num_labels)
        return self

    def decision_function(self, X, scale: float | None = None) -> np.ndarray:
        """Logits (N, classes) of B + scale · τ_B (the chosen scale, or the one given; 0 is B
        with the carried-over head alone)."""
        check_fitted(self, "model_")
        model = (
            self.model_
            if scale is None
            else self.task_vector_.apply_to(self.target_model_, scale=scale)
        )
        return self._logits(model, X, self.processor_).numpy()

    def predict(self, X, scale: float | None = None) -> np.ndarray:
        """Class id (from `classes_`) per input."""
        return self.classes_[self.decision_function(X, scale).argmax(-1)]

    def score(self, X, y, sample_weight=None, scale: float | None = None) -> float:
        """Accuracy on (X, y)."""
        return scored(self.predict(X, scale), y, sample_weight)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the transferred classifier as a Hugging Face checkpoint folder (atomically), with
        τ_B in `task_vector.safetensors` and everything that rebuilds the run in
        `tasklift_transfer.json` (parameters, chosen scale, validation scores); an existing
        `path` is replaced only if tasklift wrote it and `overwrite` is set."""
        check_fitted(self, "model_")
        check_output(path, overwrite=overwrite)
        params = {k: recorded(v) for k, v in self.get_params().items() if k != "processor"}
        params["scales"] = [float(s) for s in params["scales"]]
        info = {
            "class": "Transfer",
            "version": __version__,
            "params": params,
            "scale": self.scale_,
            "val_scores": self.val_scores_,
            "moved_params": self.moved_params_,
            "source_params": self.source_params_,
        }
        with atomic_dir(path) as tmp:
            self.model_.save_pretrained(tmp)
            if self.processor_ is not None:
                self.processor_.save_pretrained(tmp)
            self.task_vector_.save(tmp / "task_vector.safetensors", method=self.method)
            write_text(tmp / _SETTINGS, json.dumps(info, indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike, **overrides) -> Transfer:
        """Read what `save` wrote: the transferred model, τ_B, the settings and the scores.

        Raises:
            FileNotFoundError: `path` is not a folder written by `Transfer.save`.
        """
        settings = Path(path) / _SETTINGS
        if not settings.is_file():
            raise FileNotFoundError(f"{path} has no {_SETTINGS}; was it written by Transfer.save?")
        info = json.loads(settings.read_text())
        t = cls(**{**info["params"], **overrides})
        t.model_, t.processor_ = t._load(path, head=True)
        t.task_vector_ = TaskVector.load(Path(path) / "task_vector.safetensors")
        t.scale_ = float(info["scale"])
        t.target_model_ = t.task_vector_.apply_to(t.model_, scale=-t.scale_)
        t.val_scores_ = {float(k): v for k, v in info["val_scores"].items()}
        t.moved_params_, t.source_params_ = info["moved_params"], info["source_params"]
        t.classes_ = np.arange(t.model_.config.num_labels)
        return t
