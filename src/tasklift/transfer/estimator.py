"""`Transfer`: carry a fine-tuned model's skill onto another base model with no training."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from torch import nn
from tqdm.auto import tqdm

from .._estimator import as_labels, check_fitted, check_runtime, scored
from ..checks import check_bool, check_choice, check_float, check_list
from ..data import is_texts, num_items, take
from ..evaluate import accuracy
from ..loading import load_model, load_processor
from ..lora import is_adapter, is_classifier, merged, read_adapter
from ..models import DEFAULT_MAX_LENGTH, encode, token_limit
from ..taskvector import TaskVector
from ..timing import Timings
from . import saving
from .head import classifier_setup
from .lm import greedy_targets, is_causal_lm, is_lm_checkpoint, lm_score, lm_setup, verbalise
from .many import move_all, solved_maps, touched_pairs
from .methods import (
    SCALE_SEARCH,
    SCALES,
    SEARCHES,
    STATS_DTYPE,
    STATS_DTYPES,
    TIE_BREAK,
    TOKENS,
    Method,
    get_method,
)
from .pairing import token_refusal, unpaired
from .scales import choose_scale
from .solve import POST_STEPS, transport, zeroed
from .tokens import word_pooling

__all__ = ["Transfer"]


class Transfer(ClassifierMixin, BaseEstimator):
    """Carry A_ft's skill (A = `source`, A_ft = `finetuned`) onto `target` (B): BiCo or a baseline.

    `fit` computes τ_A = A_ft − A, carries A_ft's head onto B's features, calibrates A and B on a
    few inputs, moves τ_A into B's coordinates with the chosen method and picks the task-vector
    scale on a validation split. The result is a classifier of B's architecture: `model_`.

    Args:
        source, finetuned, target: checkpoint folders or models (A and B may be backbones or
            classifiers; A_ft a classifier or causal LM, or a PEFT LoRA adapter folder of A:
            a causal LM's, or a SEQ_CLS classifier's with its head in modules_to_save).
        method: a name of `tasklift.transfer.METHODS` ("bico", "activation", "gradient",
            "permutation", "naive", "gradfix", "gradfix-mean").
        token: calibration token pairing: "all", "cls", "mean", or "word" (texts whose
            tokenizers differ: each word's tokens averaged, words matched by characters).
        scales: task-vector scales tried on the validation split (1 without one).
        scale_search: "fibonacci" (at most 4 of `scales` evaluated: exact when the validation
            score is strictly unimodal over up to 7 scales, which ties break; see
            `transfer.scales`) or "grid" (all).
        tie_break: singular values of a side's first cross-covariance at or below this fraction
            of the largest are settled by its later signals, or mapped to zero where none
            determines them (see `methods.TIE_BREAK`; the head's map too).
        center: align centred covariances (means removed) rather than raw second moments; their
            statistics are float64 whatever `stats_dtype` (centring subtracts the means'
            product from raw sums: float32 sums lost 0.7% where means are 50x the spread).
        block_map: {target block: source block}; default proportional depth.
        choices: causal LMs answering in words: the label words, scored by the verbaliser
            (the likeliest choice after the prompt); y may be words or indices into them.
        max_new_tokens: label-free LM calibration: length of A_ft's greedy continuations.
        max_stats_gb: memory for the cross-covariances held at once; past it, calibration runs
            in several passes over the same inputs, block by block (None: one pass). It caps
            too, apart, the gradient rows of A a classifier's calibration keeps (2 GiB by
            default) so that A runs once (`calibration.HeadStep`): up to twice it in all.
        stats_dtype: "float32" or "float64" (twice the memory and 3x slower to accumulate;
            solved in float64 either way; see `methods.STATS_DTYPE`).
        processor: tokenizer / image processor for both models (default: each model's own).

    Learned: `model_` (B + scale_ · τ_B), `task_vector_` (τ_B), `target_model_` (B with the
    carried head, made on demand), `scale_`, `val_scores_` {scale evaluated: score}, `pairs_`,
    `classes_`, `head_` (B's carried head layers), `adapter_config_` (A_ft's PEFT config, if
    an adapter), `timings_` {phase: seconds} of `fit`, never overlapping: "load", "setup" (τ_A,
    pairs, copies; an LM's loads and targets), "labels" (A_ft's predictions), "calibrate" (A's
    and B's forward-backward passes; a classifier's B forward, then backward once "head" has
    carried A_ft's head onto it), "statistics" (pairing and accumulating their
    rows), "solve", "transport", "post" (GradFix), "scale search";
    `open_directions_` [zeroed, all]: the maps' directions no calibration signal determined,
    which carry none of τ_A (see `methods.TIE_BREAK`).

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
        scale_search: str = SCALE_SEARCH,
        tie_break: float = TIE_BREAK,
        center: bool = False,
        block_map: Mapping[int, int] | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        device: str = "auto",
        dtype: str = "auto",
        progress: bool = False,
        choices: Sequence[str] | None = None,
        max_new_tokens: int = 32,
        max_stats_gb: float | None = None,
        stats_dtype: str = STATS_DTYPE,
        processor=None,
    ) -> None:
        self.source, self.finetuned, self.target = source, finetuned, target
        self.method, self.token, self.scales = method, token, scales
        self.scale_search = scale_search
        self.tie_break, self.center, self.block_map = tie_break, center, block_map
        self.batch_size, self.max_length, self.progress = batch_size, max_length, progress
        self.device, self.dtype, self.processor = device, dtype, processor
        self.choices, self.max_new_tokens = choices, max_new_tokens
        self.max_stats_gb, self.stats_dtype = max_stats_gb, stats_dtype

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def _load(self, src, head: bool = False, lm: bool = False):
        """A model and its processor (`processor=` wins); causal LMs load with their LM head."""
        rt = dict(device=self.device, dtype=self.dtype)
        lm = lm or (head and is_lm_checkpoint(src))
        model, proc = load_model(src, head=head and not lm, lm=lm, **rt)
        return model, self.processor if self.processor is not None else proc

    def _tokenizers(self) -> tuple:
        """A_ft's (A's for an adapter) and B's tokenizers without loading weights
        (`processor=` serves both; None for a model object, which brings none)."""
        if self.processor is not None:
            return self.processor, self.processor
        own = isinstance(self.finetuned, (str, os.PathLike)) and not is_adapter(self.finetuned)
        a = self.finetuned if own else self.source
        return tuple(
            None if isinstance(m, nn.Module) else load_processor(m) for m in (a, self.target)
        )

    @staticmethod
    def _refuse_tokens(texts, tokenizers: tuple, max_length: int | None, padded=False) -> None:
        """token='all' pairs tokens by position: refuse texts the tokenizers split apart."""
        reason = token_refusal(texts, tokenizers, max_length or DEFAULT_MAX_LENGTH, padded=padded)
        if reason:
            raise ValueError(reason)

    def _batches(self, n: int, desc: str):
        idx = [np.arange(i, min(i + self.batch_size, n)) for i in range(0, n, self.batch_size)]
        return tqdm(idx, desc=desc, disable=not self.progress, leave=False)

    def _max_length(self, X, *models: tuple[nn.Module, object]) -> int | None:
        """The token limit for texts X fed to every (model, processor): `max_length` checked
        against each model's maximum, or by default the lowest maximum, at most 128."""
        if not is_texts(X):
            return self.max_length  # pre-encoded or images: nothing is tokenised
        return min(token_limit(self.max_length, m, p) for m, p in models)

    def _logits(self, model: nn.Module, X, processor) -> torch.Tensor:
        dev, out = next(model.parameters()).device, []
        with torch.no_grad():
            for idx in self._batches(num_items(X), "predict"):
                batch = encode(take(X, idx), processor, max_length=self.max_length_)
                out.append(model(**{k: v.to(dev) for k, v in batch.items()}).logits.float().cpu())
        return torch.cat(out)

    def _move_all(self, method, prep: dict, tvs: list, n: int, words, images: bool) -> list:
        """Calibrate A and B once (in passes under the memory budget) and move every task
        vector in `tvs` with the same maps, module by module: [{B parameter: delta}, ...].
        Only modules some task vector changes are calibrated and solved."""
        pairs = touched_pairs(prep["pairs"], tvs)
        clock = self.timings_
        maps = solved_maps(self, method, prep, pairs, n, words, images, timings=clock)
        self.open_directions_ = [0, 0]  # directions of the maps sent to zero, of all
        maps = zeroed(maps, self.open_directions_)
        with clock("transport"):  # less the solves and calibration it pulls from `maps`
            return move_all(tvs, prep["source"], prep["target"], pairs, clock.each(maps, "solve"))

    def check_params(self) -> Method:
        """Every parameter in its range, before any model loads (`fit` and `move_adapters`);
        returns the method's description.

        Raises:
            ValueError: naming the parameter, its value and what it takes.
        """
        method = get_method(self.method)
        check_runtime(self)
        check_choice(self.token, "token", choices=TOKENS)
        check_list(self.scales, "scales", item=check_float)
        check_choice(self.scale_search, "scale_search", choices=SEARCHES)
        check_float(self.tie_break, "tie_break", low=0, high=1)
        check_bool(self.center, "center")
        check_choice(self.stats_dtype, "stats_dtype", choices=STATS_DTYPES)
        return method

    def fit(self, X, y=None, *, X_val=None, y_val=None) -> Transfer:
        """Calibrate on X (~128 inputs) and labels y (A_ft's own predictions or continuations
        without), transport τ_A, and choose the scale on (X_val, y_val).

        A_ft may be a classifier (y: class labels) or a causal LM (X: prompts, y: target texts
        or, with `choices`, label words; see `transfer.lm`).

        Raises:
            ValueError: unknown method, missing models, empty calibration set, heads or shapes
                that cannot be carried over.
        """
        method = self.check_params()
        if None in (self.source, self.finetuned, self.target):
            raise ValueError("Transfer needs source=, finetuned= and target= (folders or models)")
        n = num_items(X)
        if n == 0:
            raise ValueError("the calibration set is empty; pass some inputs (about 128)")
        if self.token == "all" and is_texts(X):  # the inputs, before any model runs
            self._refuse_tokens(X, self._tokenizers(), self.max_length)
        self.adapter_config_, self.timings_ = None, Timings()
        clock = self.timings_
        with clock("load"):
            if is_adapter(self.finetuned):  # A_ft = A + a PEFT LoRA: τ_A from its factors
                tv_a, self.adapter_config_ = read_adapter(self.finetuned)
                lm = not is_classifier(self.adapter_config_)
                given = y is not None or (isinstance(X, dict) and "labels" in X)
                # an LM's targets given: A_ft is never run, so it is not merged (a model less)
                a_ft = None if lm and given else merged(
                    self.source, self.finetuned, device=self.device, dtype=self.dtype)  # fmt: skip
                proc_a = None
            else:
                tv_a, (a_ft, proc_a) = None, self._load(self.finetuned, head=True)
        self.lm_ = a_ft is None or is_causal_lm(a_ft)
        if a_ft is not None:  # what the setup runs A_ft on (the head pass, greedy targets)
            self.max_length_ = self._max_length(X, (a_ft, proc_a))
        setup = lm_setup if self.lm_ else classifier_setup
        with clock("setup"):
            prep = setup(self, a_ft, proc_a, X, y, tv=tv_a)
        a, b, pairs, proc_b = prep["source"], prep["target"], prep["pairs"], prep["processor"]
        if not pairs:  # before the calibration passes, which could move nothing
            raise ValueError(unpaired(a, b))
        proc_a = prep["source_processor"]  # A's own where A_ft came as an adapter
        self.processor_, self.head_ = proc_b, prep.get("head", [])
        # before any loss; A has A_ft's architecture, so its token limit
        self.max_length_ = self._max_length(X, (a, proc_a), (b, proc_b))
        del a_ft  # τ_A holds what is needed of it (an LM of several GB)
        if self.token == "all":  # the texts calibration reads (generated targets included)
            tokenizers = (proc_a, proc_b)  # an LM's batches are padded on the right (lm_encode)
            self._refuse_tokens(prep["texts"], tokenizers, self.max_length_, padded=not self.lm_)
        words = None
        if self.token == "word":
            texts = prep["texts"]
            if texts is None:
                raise ValueError("token='word' pairs the words of raw texts: pass X as strings")
            words = lambda idx: word_pooling(take(texts, idx), (proc_a, proc_b), self.max_length_)  # noqa: E731
        images = not (is_texts(X) or (isinstance(X, dict) and "input_ids" in X))  # patch grids
        (moved,) = self._move_all(method, prep, [prep["tv"]], n, words, images)
        if not moved:
            transport(prep["tv"], a, b, {}, {})  # raises: nothing of τ_A could be moved
        tv_b = TaskVector(moved)
        source_params, a = len(prep.pop("tv").deltas), prep.pop("source")  # A and τ_A: freed
        with clock("post"):
            if method.post is not None:
                post = POST_STEPS[method.post]
                tv_b = post(tv_b, b, self._batches(n, method.post), prep["loss"])
        self.pairs_, self.task_vector_ = pairs, tv_b
        self.source_params_, self.moved_params_ = source_params, len(tv_b.deltas)
        del a
        with clock("scale search"):
            self.scale_, self.val_scores_ = choose_scale(self, tv_b, b, X_val, y_val)
        self.model_ = tv_b.apply_to(b, scale=self.scale_, inplace=True)
        self.classes_ = self._classes(b)
        return self

    def _classes(self, model: nn.Module) -> np.ndarray | None:
        if self.lm_:
            return None if self.choices is None else np.arange(len(self.choices))
        return np.arange(model.config.num_labels)

    def _score_model(self, model: nn.Module, X, y) -> float:
        """Accuracy (classifier, or an LM's verbaliser with `choices`), else the targets' mean
        log-probability per token under the LM."""
        if self.lm_:
            return lm_score(model, X, y, self.processor_, choices=self.choices,
                            max_length=self.max_length_, batch_size=self.batch_size)  # fmt: skip
        return accuracy(self._logits(model, X, self.processor_), as_labels(y, num_items(X)))

    @property
    def target_model_(self) -> nn.Module:
        """B with the carried-over head and no task vector (a copy, made on demand)."""
        check_fitted(self, "model_")
        return self.task_vector_.apply_to(self.model_, scale=-self.scale_)

    def _model(self, scale: float | None) -> nn.Module:
        check_fitted(self, "model_")
        if scale is None or scale == self.scale_:
            return self.model_
        return self.task_vector_.apply_to(self.model_, scale=scale - self.scale_)

    def decision_function(self, X, scale: float | None = None) -> np.ndarray:
        """Logits (N, classes) of B + scale · τ_B (the chosen scale, or the one given; 0 is B
        with the carried-over head alone).

        Raises:
            ValueError: the transfer moved a causal LM (it has no class logits).
        """
        if getattr(self, "lm_", False):
            raise ValueError("a causal LM has no class logits; use predict() or score()")
        return self._logits(self._model(scale), X, self.processor_).numpy()

    def predict(self, X, scale: float | None = None):
        """Class id (from `classes_`) per input; for a causal LM, the index of the likeliest of
        `choices`, or (without choices) the greedy continuation of each prompt."""
        if not getattr(self, "lm_", False):
            return self.classes_[self.decision_function(X, scale).argmax(-1)]
        model = self._model(scale)
        if self.choices is not None:
            return verbalise(model, X, self.choices, self.processor_, max_length=self.max_length_)
        return greedy_targets(model, X, self.processor_, max_new_tokens=self.max_new_tokens,
                              batch_size=self.batch_size)  # fmt: skip

    def score(self, X, y, sample_weight=None, scale: float | None = None) -> float:
        """Accuracy on (X, y); for a causal LM without `choices`, the mean log-probability per
        token of the targets y (higher is better)."""
        if getattr(self, "lm_", False):
            return self._score_model(self._model(scale), X, y)
        return scored(self.predict(X, scale), y, sample_weight)

    def move_adapters(
        self,
        adapters: Sequence[str | os.PathLike],
        X,
        y=None,
        *,
        out: str | os.PathLike,
        scale: float = 1.0,
        X_val=None,
        y_val=None,
        overwrite: bool = False,
        map_cache: bool | str | os.PathLike | None = True,
    ) -> list[dict]:
        """Move several PEFT LoRA adapters of A (`source`) to B (`target`) with one calibration.

        With targets y (or X's own labels) the maps of a causal-LM transfer come from A and B
        alone: they are solved once, or read from `map_cache` (True: tasklift's cache folder; a
        folder; False: none) when A, B, X, y and the settings are the same, and move every
        adapter. Label-free targets (each A_ft's own), GradFix's mask and classifiers' adapters
        (each carries its own head) depend on the adapter: each is then calibrated alone, with a
        warning. Each adapter is written to out/<its folder name> as an exact LoRA of B at
        `scale`, or with (X_val, y_val) at the scale of `scales` scoring best on them (chosen
        per adapter, as `fit` does), and out/tasklift_run.json records what went where and how
        the maps were made. Returns those records.

        Raises:
            ValueError: no adapters, adapters sharing a folder name, one that does not fit A,
                or both a scale and X_val.
        """
        from .many import move_adapters

        return move_adapters(self, adapters, X, y, out=out, scale=scale, X_val=X_val,
                             y_val=y_val, overwrite=overwrite, map_cache=map_cache)  # fmt: skip

    def save_adapter(self, path: str | os.PathLike, *, overwrite: bool = False) -> dict:
        """τ_B at the chosen scale as a PEFT LoRA folder for B (`PeftModel.from_pretrained(B,
        path)` loads it): the source adapter's rank, alpha and task_type, factors moved exactly
        (B_B = R_outᵀ B_A, A_B = A_A R_in), and a classifier's carried head saved whole under
        modules_to_save; returns {module: relative error} of any delta re-factorised by
        truncated SVD (GradFix's mask breaks low rank).

        Raises:
            ValueError: A_ft was not given as a PEFT adapter folder.
        """
        return saving.save_adapter(self, path, overwrite=overwrite)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the transferred classifier as a Hugging Face checkpoint folder (atomically), with
        τ_B in `task_vector.safetensors` and everything that rebuilds the run in
        `tasklift_transfer.json` (parameters, chosen scale, validation scores); an existing
        `path` is replaced only if tasklift wrote it and `overwrite` is set. Under torchrun
        only rank 0 writes."""
        saving.save(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, **overrides) -> Transfer:
        """Read what `save` wrote: the transferred model, τ_B, the settings and the scores.

        Raises:
            FileNotFoundError: `path` is not a folder written by `Transfer.save`.
        """
        return saving.load(cls, path, overrides)
