"""BiCo task-vector transfer (arXiv 2605.28444) and its baselines: move τ_A onto B, no training.

For a linear layer ∂L/∂W = g xᵀ, so a task vector is a sum of products of output gradients g
and input activations x. One forward-backward pass of A and of B over the same calibration
inputs gives, per matched module, the cross-covariances C_in = X_Aᵀ X_B and C_out = G_Aᵀ G_B;
their orthogonal Procrustes factors R_in, R_out (semi-orthogonal when widths differ) carry the
update across: ΔW_B = R_outᵀ ΔW_A R_in, and δ_B = δ_A R_out for biases, norms and embeddings.

The baselines differ only in which signal aligns each side and how the map is solved:
activation-only (Theseus-style: outputs instead of output gradients), gradient-only (input
gradients instead of inputs), permutation re-basin (TransFusion-style: Hungarian matching of
heads then units instead of Procrustes, on activations), naive task arithmetic (identity maps,
equal shapes only) and GradFix (naive, keeping the entries whose sign agrees with −∇L_B).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import block_diag
from torch import nn
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from ._estimator import ClassifierMixin, as_labels, check_fitted
from ._torch import resolve_device, resolve_dtype
from .data import num_items, take
from .defaults import METHODS, TOKENS
from .evaluate import accuracy
from .hooks import capture
from .io import atomic_dir, write_text
from .maps import permutation, procrustes
from .models import _backbone, blocks, encode, load_model
from .taskvector import TaskVector

__all__ = [
    "METHODS",
    "TOKENS",
    "SIGNALS",
    "match_modules",
    "calibrate",
    "needed_signals",
    "solve_maps",
    "transport",
    "gradient_sign_mask",
    "head_linears",
    "transport_head",
    "Transfer",
    "ALPHAS",
]

#: per method, the calibration signals aligning a module's input side and its output side
SIGNALS = {
    "bico": (("input",), ("grad_output", "output")),
    "activation": (("input",), ("output",)),
    "gradient": (("grad_input",), ("grad_output",)),
    "permutation": (("input",), ("output",)),
}
#: weight of a side's later signals, which only settle directions its first leaves open: the
#: residual-stream gradient is blind to the all-ones direction (every reader is a LayerNorm) and
#: the final norm's gradient spans at most as many directions as there are classes
TIE_BREAK = 1e-4
#: fused q/k/v projections: their output side is split in three before it is aligned
FUSED = re.compile(r"(^|\.)(c_attn|qkv|query_key_value|Wqkv)$")
_HEADS_OUT = re.compile(r"(^|\.)(query|key|value|q_proj|k_proj|v_proj|q_lin|k_lin|v_lin)$")
_HEADS_IN = re.compile(r"(^|\.)(attention\.output\.dense|out_proj|o_proj|out_lin|attn\.c_proj)$")
_MATRIX = (nn.Linear, Conv1D, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _owns_params(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def _dims(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a matrix module; vector modules (norms, embeddings) report d_in = 0."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return tuple(module.weight.shape)
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.in_channels, module.out_channels
    return 0, max(p.shape[-1] for p in module.parameters(recurse=False))


def _block_list(model: nn.Module) -> tuple[str, int]:
    """(name of the transformer-block ModuleList, its length), or ("", 0) where there is none."""
    try:
        found = blocks(model)
    except (ValueError, AttributeError):
        return "", 0
    return next(n for n, m in model.named_modules() if m is found), len(found)


def match_modules(
    source: nn.Module, target: nn.Module, block_map: Mapping[int, int] | None = None
) -> dict[str, str]:
    """Pair each parameter-holding module of the target with the source module of the same role.

    Names must agree up to the block index; target block j takes source block
    round(j (L_A − 1) / (L_B − 1)) (proportional depth), or `block_map[j]` when given
    (target blocks missing from it are left untouched).

    Returns:
        {target module name: source module name}.
    """
    pa, la = _block_list(source)
    pb, lb = _block_list(target)
    if block_map is None:
        block_map = {j: round(j * (la - 1) / max(lb - 1, 1)) for j in range(lb)} if la else {}
    have = {n for n, m in source.named_modules() if _owns_params(m)}
    pairs = {}
    for name, m in target.named_modules():
        if not _owns_params(m):
            continue
        src = name
        if pb and name.startswith(pb + "."):
            j, _, rest = name[len(pb) + 1 :].partition(".")
            if int(j) not in block_map:
                continue
            src = f"{pa}.{block_map[int(j)]}" + (f".{rest}" if rest else "")
        if src in have:
            pairs[name] = src
    return pairs


def _tokens(t: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Any captured tensor as (B, T, d): conv maps (B, C, *grid) become (B, grid, C)."""
    t = t.detach().float()
    if isinstance(module, nn.modules.conv._ConvNd):
        return t.flatten(2).transpose(1, 2)
    return t[:, None] if t.ndim == 2 else t.reshape(t.shape[0], -1, t.shape[-1])


def _grid(t: torch.Tensor) -> tuple[int, int] | None:
    """(prefix tokens, grid side) when the tokens are 0 or 1 prefix tokens then a square grid."""
    for prefix in (1, 0):
        side = math.isqrt(t.shape[1] - prefix)
        if side > 0 and side * side == t.shape[1] - prefix:
            return prefix, side
    return None


def _align(a: torch.Tensor, b: torch.Tensor, token: str, where: str):
    """Pair token rows of A (B, T_a, d_a) with B's (B, T_b, d_b): (N, d_a), (N, d_b)."""
    if token == "cls":
        return a[:, 0], b[:, 0]
    if token == "mean":
        return a.mean(1), b.mean(1)
    if a.shape[1] != b.shape[1]:  # patch grids of another size: resample B's grid onto A's
        ga, gb = _grid(a), _grid(b)
        if ga is None or gb is None or ga[0] != gb[0]:
            raise ValueError(
                f"{where}: {a.shape[1]} tokens in A but {b.shape[1]} in B and they are not "
                "square patch grids; use token='cls' or 'mean'"
            )
        p, side = ga
        grid = b[:, p:].transpose(1, 2).reshape(b.shape[0], b.shape[2], gb[1], gb[1])
        grid = F.interpolate(grid, size=(side, side), mode="bilinear", align_corners=False)
        b = torch.cat([b[:, :p], grid.flatten(2).transpose(1, 2)], 1)
    return a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])


def _capture_pass(
    model: nn.Module, points: dict, batch, loss_fn, backward: bool
) -> dict[tuple, torch.Tensor]:
    """One forward (and backward) pass: {(module name, signal): (B, T, d)} for every point."""
    modules = dict(model.named_modules())
    got = {}
    hooks = {key: (modules[key[0]], key[1]) for key in points}
    store = lambda key, t: got.__setitem__(key, _tokens(t, modules[key[0]]).cpu())  # noqa: E731
    with capture(hooks, store), torch.set_grad_enabled(backward):
        loss = loss_fn(model, batch)
        if backward:
            loss.backward()
    model.zero_grad(set_to_none=True)
    return got


def calibrate(
    source: nn.Module,
    target: nn.Module,
    pairs: Mapping[str, str],
    batches: Iterable,
    loss_fn: Callable[[nn.Module, object], torch.Tensor],
    *,
    signals: Sequence[str] = ("input", "grad_output", "output"),
    token: str = "all",
) -> dict[tuple[str, str], torch.Tensor]:
    """Cross-covariances A vs B of each calibration signal of every matched module.

    Args:
        pairs: target module -> source module (see `match_modules`).
        batches: calibration batches, each given to `loss_fn` for both models.
        loss_fn: (model, batch) -> scalar loss, e.g. the task loss through the model's head.
        signals: which of "input", "output", "grad_input", "grad_output" to record; vector
            modules (norms, embeddings) have only an output side, so no input signals.
        token: row alignment: "cls" (token 0), "mean", or "all" (every token; patch grids of
            different sizes are resampled onto A's).

    Returns:
        {(target module, signal): C (d_A, d_B) float64}. A signal that never arrives (the input
        gradient of the first layer) is absent.

    Raises:
        KeyError: a module named in `pairs` does not exist.
        ValueError: unknown token alignment or signal; token counts that cannot be aligned.
    """
    if token not in TOKENS:
        raise ValueError(f"unknown token alignment {token!r}; use one of {TOKENS}")
    bad = [s for s in signals if s not in ("input", "output", "grad_input", "grad_output")]
    if bad:
        raise ValueError(f"unknown calibration signal(s) {bad}")
    mods_a, mods_b = dict(source.named_modules()), dict(target.named_modules())
    for b, a in pairs.items():
        for name, mods, model in ((a, mods_a, source), (b, mods_b, target)):
            if name not in mods:
                raise KeyError(f"{type(model).__name__} has no module {name!r}")
    sigs = {
        b: [s for s in signals if isinstance(mods_b[b], _MATRIX) or not s.endswith("input")]
        for b in pairs
    }
    backward = any(s.startswith("grad") for s in signals)
    pts_a = {(pairs[b], sig) for b in pairs for sig in sigs[b]}
    pts_b = {(b, sig) for b in pairs for sig in sigs[b]}
    out: dict[tuple[str, str], torch.Tensor] = {}
    for batch in batches:
        got_a = _capture_pass(source, pts_a, batch, loss_fn, backward)
        got_b = _capture_pass(target, pts_b, batch, loss_fn, backward)
        for b, a in pairs.items():
            for sig in sigs[b]:
                if (a, sig) not in got_a or (b, sig) not in got_b:
                    continue  # e.g. no gradient reaches the model's raw inputs
                xa, xb = _align(got_a[(a, sig)], got_b[(b, sig)], token, f"{a} -> {b} ({sig})")
                c = xa.double().T @ xb.double()
                out[(b, sig)] = out[(b, sig)] + c if (b, sig) in out else c
    return out


def needed_signals(method: str) -> list[str]:
    """The calibration signals `solve_maps` reads for `method` (none for naive and GradFix)."""
    return sorted({s for side in SIGNALS.get(method, ()) for s in side})


def _heads(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(getattr(config, "vision_config", config), "num_attention_heads", None)


def _solve(xy: np.ndarray, method: str, chunks: int, groups) -> np.ndarray:
    if chunks > 1:  # fused q/k/v: align each projection with its counterpart only
        a, b = xy.shape[0] // chunks, xy.shape[1] // chunks
        parts = [xy[i * a : (i + 1) * a, i * b : (i + 1) * b] for i in range(chunks)]
        return block_diag(*(_solve(p, method, 1, groups) for p in parts))
    return permutation(xy, groups) if method == "permutation" else procrustes(xy)


def solve_maps(
    source: nn.Module,
    target: nn.Module,
    pairs: Mapping[str, str],
    cov: Mapping[tuple[str, str], torch.Tensor] | None,
    method: str = "bico",
) -> dict[str, tuple[torch.Tensor | None, torch.Tensor]]:
    """R_in (d_in_A, d_in_B) and R_out (d_out_A, d_out_B) per target module, for `method`.

    Identity stands in where a side has no calibration signal and the widths agree; naive and
    GradFix use identities throughout and skip modules whose widths differ.
    """
    if method not in METHODS:
        raise ValueError(f"unknown transfer method {method!r}; use one of {METHODS}")
    mods_a, mods_b = dict(source.named_modules()), dict(target.named_modules())
    heads = (_heads(source), _heads(target))
    cov = cov or {}
    maps = {}
    for b, a in pairs.items():
        (ia, oa), (ib, ob) = _dims(mods_a[a]), _dims(mods_b[b])
        rs = []
        for k, (side, da, db) in enumerate((("in", ia, ib), ("out", oa, ob))):
            if side == "in" and da == 0:
                rs.append(None)
                continue
            cs = [cov[(b, sig)] for sig in SIGNALS.get(method, ((), ()))[k] if (b, sig) in cov]
            if method in ("naive", "gradfix") or not cs:
                if da != db:
                    if method in ("naive", "gradfix"):
                        break  # identity maps need equal widths: leave this module out
                    raise ValueError(f"no calibration signal for the {side}put side of {b}")
                rs.append(torch.eye(da))
                continue
            # fused q|k|v: three blocks; re-basin matches heads, then units, where heads live
            fused = side == "out" and FUSED.search(b) is not None
            named = _HEADS_OUT if side == "out" else _HEADS_IN
            grouped = method == "permutation" and None not in heads
            groups = heads if grouped and (fused or named.search(b)) else None
            weights = [1.0] + [TIE_BREAK] * (len(cs) - 1)
            c = sum(w * c / c.norm().clamp_min(1e-300) for w, c in zip(weights, cs, strict=True))
            r = _solve(c.numpy(), method, 3 if fused else 1, groups)
            rs.append(torch.from_numpy(r).float())
        else:
            maps[b] = (rs[0], rs[1])
    return maps


def _move(delta: torch.Tensor, module: nn.Module, r_in, r_out, param: str) -> torch.Tensor:
    """One parameter's delta in B's coordinates."""
    if param == "weight" and isinstance(module, Conv1D):  # (d_in, d_out)
        return r_in.T @ delta @ r_out
    if param == "weight" and isinstance(module, _MATRIX):  # (d_out, d_in, *kernel)
        return torch.einsum("oi...,ob,ic->bc...", delta, r_out, r_in)
    return delta @ r_out  # biases, norms, embeddings, position and class tokens: (..., d_out)


def transport(
    tv: TaskVector,
    source: nn.Module,
    target: nn.Module,
    pairs: Mapping[str, str],
    maps: Mapping[str, tuple[torch.Tensor | None, torch.Tensor]],
) -> TaskVector:
    """τ_B: every delta of τ_A on a matched module moved by that module's maps.

    Deltas whose leading shape differs from B's parameter (e.g. position tables of another
    length) and modules without maps are left out; `len(result.deltas)` says what was covered.

    Raises:
        ValueError: no delta of τ_A could be moved (wrong pairs or task vector).
    """
    mods_a, params_b = dict(source.named_modules()), dict(target.named_parameters())
    out = {}
    for b, a in pairs.items():
        if b not in maps:
            continue
        r_in, r_out = maps[b]
        for param, _ in mods_a[a].named_parameters(recurse=False):
            key = f"{a}.{param}"
            if key not in tv.deltas:
                continue
            moved = _move(tv.deltas[key], mods_a[a], r_in, r_out, param)
            if moved.shape == params_b[f"{b}.{param}"].shape:
                out[f"{b}.{param}"] = moved
    if not out:
        raise ValueError(
            "no delta of the task vector could be moved: do the module pairs and maps come "
            "from these models, and does the task vector hold their parameters?"
        )
    return TaskVector(out)


def gradient_sign_mask(
    tv: TaskVector, target: nn.Module, batches: Iterable, loss_fn: Callable
) -> TaskVector:
    """GradFix: keep the entries of τ (already in B's shapes) whose sign agrees with −∇L_B(θ_B)."""
    params = dict(target.named_parameters())
    target.zero_grad(set_to_none=True)
    for batch in batches:
        loss_fn(target, batch).backward()
    kept = {}
    for k, v in tv.deltas.items():
        g = params[k].grad
        kept[k] = v if g is None else v * (v * -g.detach().float().cpu() > 0)
    target.zero_grad(set_to_none=True)
    return TaskVector(kept)


def head_linears(classifier: nn.Module) -> list[str]:
    """Names of the classifier's linear layers outside its backbone, in order (the task head).

    Raises:
        ValueError: there are none, or the head holds parameters of other kinds.
    """
    prefix = getattr(classifier, "base_model_prefix", "") + "."
    names, other = [], []
    for name, m in classifier.named_modules():
        if name.startswith(prefix) or not _owns_params(m):
            continue
        (names if isinstance(m, nn.Linear) else other).append(name)
    if not names or other:
        raise ValueError(
            f"{type(classifier).__name__}: expected a head of linear layers outside "
            f"{prefix[:-1]!r}; found linear {names} and other {other}"
        )
    return names


def transport_head(
    finetuned: nn.Module, target: nn.Module, r_in: torch.Tensor, names: Sequence[str]
) -> None:
    """Write A's fine-tuned head into B's classifier (in place), reading B's features.

    The first layer reads through R_in (d_A, d_B): W_B = W_A R_in. Hidden head units keep A's
    coordinates, padded with zeros into B's (wider or equal) head, so elementwise activations
    commute; the class outputs are shared.
    """
    mods_a, mods_b = dict(finetuned.named_modules()), dict(target.named_modules())
    missing = [n for n in names if not isinstance(mods_b.get(n), nn.Linear)]
    if missing:
        raise ValueError(
            f"the target classifier has no head layer(s) {missing}; source and target must share "
            "a head layout (the same model family, e.g. ViT -> ViT)"
        )
    classes = mods_a[names[-1]].out_features, mods_b[names[-1]].out_features
    if classes[0] != classes[1]:
        raise ValueError(
            f"the target head has {classes[1]} classes but the source {classes[0]}; build "
            f"the target classifier with num_labels={classes[0]}"
        )
    e_in = r_in
    with torch.no_grad():
        for name in names:
            la, lb = mods_a[name], mods_b[name]
            if lb.out_features < la.out_features:
                raise ValueError(
                    f"head layer {name}: the target has {lb.out_features} units, fewer than the "
                    f"source's {la.out_features}; the head cannot be carried over"
                )
            e_out = torch.eye(la.out_features, lb.out_features)  # identity for the last layer
            lb.weight.copy_(e_out.T @ la.weight.float().cpu() @ e_in)
            if lb.bias is not None:
                lb.bias.copy_(la.bias.float().cpu() @ e_out if la.bias is not None else 0.0)
            e_in = e_out


#: scales of τ_B tried on the validation split (0 is B with the carried-over head alone)
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


def _classifier_like(finetuned: nn.Module, backbone: nn.Module) -> nn.Module:
    """A classifier of the target's architecture with the source's labels and a blank head."""
    import transformers as tf

    cfg = copy.deepcopy(backbone.config)
    cfg.num_labels = finetuned.config.num_labels
    cfg.id2label, cfg.label2id = dict(finetuned.config.id2label), dict(finetuned.config.label2id)
    if cfg.model_type == finetuned.config.model_type:
        model = type(finetuned)(cfg)
    else:
        auto = (
            tf.AutoModelForImageClassification
            if "pixel" in str(finetuned.main_input_name)
            else tf.AutoModelForSequenceClassification
        )
        model = auto.from_config(cfg)
    _load_backbone(model, backbone)
    p = next(backbone.parameters())
    return model.to(p.device, p.dtype).eval()


def _load_backbone(classifier: nn.Module, backbone: nn.Module) -> None:
    """Copy a backbone's weights into a classifier's backbone (unused extras such as a pooler
    the classifier lacks are ignored; anything the classifier needs must be there)."""
    missing, _ = _backbone(classifier).load_state_dict(backbone.state_dict(), strict=False)
    if missing:
        raise ValueError(
            f"the base checkpoint lacks {len(missing)} parameter(s) its classifier needs, "
            f"e.g. {missing[:3]}; is it the same architecture?"
        )


class Transfer(ClassifierMixin):
    """Carry a fine-tuned model's skill onto another base model, no training (BiCo or a baseline).

    `fit` computes τ_A = A_ft − A, carries A_ft's head onto B's features, calibrates A and B on a
    few inputs, moves τ_A into B's coordinates with the chosen method and picks the scale α on
    a validation split. The result is a classifier of B's architecture: `model_`.

    Args:
        method: "bico", or a baseline: "activation", "gradient", "permutation", "naive",
            "gradfix" (see the module docstring).
        token: row alignment of the calibration tokens: "all", "cls" or "mean".
        alphas: scales of τ_B tried on the validation split (α = 1 without one).
        block_map: {target block: source block}; default proportional depth.
        processor: tokenizer / image processor for both models (default: each model's own).

    Example:
        >>> t = Transfer("bico").fit("runs/a", "runs/a_ft", "runs/b", X_cal, y_cal,
        ...                          X_val=X_val, y_val=y_val)
        >>> t.score(X_test, y_test); t.save("runs/b_transferred")
    """

    def __init__(
        self,
        method: str = "bico",
        *,
        token: str = "all",
        alphas: Sequence[float] = ALPHAS,
        block_map: Mapping[int, int] | None = None,
        batch_size: int = 16,
        max_length: int = 128,
        device: str = "auto",
        dtype: str = "auto",
        progress: bool = False,
        processor=None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown transfer method {method!r}; use one of {METHODS}")
        if token not in TOKENS:
            raise ValueError(f"unknown token alignment {token!r}; use one of {TOKENS}")
        self.method, self.token, self.alphas, self.block_map = method, token, alphas, block_map
        self.batch_size, self.max_length, self.progress = batch_size, max_length, progress
        self.device, self.dtype, self.processor = device, dtype, processor

    def _load(self, src, head: bool):
        dev = resolve_device(self.device)
        model, proc = load_model(src, head=head, device=dev, dtype=resolve_dtype(self.dtype, dev))
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

    def fit(self, source, finetuned, target, X, y=None, *, X_val=None, y_val=None) -> Transfer:
        """Transfer A_ft's skill (A = `source`, A_ft = `finetuned`) onto `target` (B).

        Args:
            source, finetuned, target: checkpoint folders or models (A and B may be backbones or
                classifiers; A_ft must be a classifier).
            X, y: calibration inputs (~128) and labels; without labels A_ft's predictions serve.
            X_val, y_val: validation split on which α is chosen.

        Raises:
            ValueError: unknown method, empty calibration set, heads or shapes that cannot be
                carried over.
        """
        a_ft, proc_a = self._load(finetuned, head=True)
        head = head_linears(a_ft)
        a, _ = self._load(source, head=False)
        b, proc_b = self._load(target, head=False)
        self.processor_ = proc_b
        n = num_items(X)
        if n == 0:
            raise ValueError("the calibration set is empty; pass some inputs (about 128)")
        a_cal = copy.deepcopy(a_ft)  # A's own weights under A_ft's head: the calibration model
        _load_backbone(a_cal, _backbone(a))
        b_cls = _classifier_like(a_ft, _backbone(b))
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
        cov = calibrate(
            a_cal,
            b_cls,
            {head[0]: head[0]},
            self._batches(n, "align head"),
            loss_fn,
            signals=("input",),
            token="cls",
        )
        r_head = torch.from_numpy(procrustes(cov[(head[0], "input")].numpy())).float()
        transport_head(a_ft, b_cls, r_head, head)
        tv = TaskVector.from_state_dicts(a_cal.state_dict(), a_ft.state_dict())
        tv = TaskVector({k: v for k, v in tv.deltas.items() if k.rsplit(".", 1)[0] not in head})
        pairs = {
            t: s for t, s in match_modules(a_cal, b_cls, self.block_map).items() if t not in head
        }
        cov = None
        if self.method in SIGNALS:
            cov = calibrate(
                a_cal,
                b_cls,
                pairs,
                self._batches(n, f"calibrate ({self.method})"),
                loss_fn,
                signals=needed_signals(self.method),
                token=self.token,
            )
        maps = solve_maps(a_cal, b_cls, pairs, cov, self.method)
        tv_b = transport(tv, a_cal, b_cls, pairs, maps)
        if self.method == "gradfix":
            tv_b = gradient_sign_mask(tv_b, b_cls, self._batches(n, "GradFix gradients"), loss_fn)
        self.pairs_, self.task_vector_, self.target_model_ = pairs, tv_b, b_cls
        self.source_params_, self.moved_params_ = len(tv.deltas), len(tv_b.deltas)
        self.val_scores_ = {}
        if X_val is not None:
            yv = as_labels(y_val, num_items(X_val))
            for alpha in self.alphas:
                model = tv_b.apply_to(b_cls, alpha=alpha)
                self.val_scores_[float(alpha)] = accuracy(self._logits(model, X_val, proc_b), yv)
        # the best validation accuracy; ties go to the α nearest 1 (the plain transfer)
        scores = self.val_scores_ or {1.0: 0.0}
        self.alpha_ = max(scores, key=lambda al: (scores[al], -abs(al - 1.0)))
        self.model_ = tv_b.apply_to(b_cls, alpha=self.alpha_)
        return self

    def decision_function(self, X, alpha: float | None = None) -> np.ndarray:
        """Logits (N, classes) of the transferred model B + α τ_B (α: the chosen one, or given;
        α = 0 is B with the carried-over head alone)."""
        check_fitted(self, "model_")
        model = (
            self.model_
            if alpha is None
            else self.task_vector_.apply_to(self.target_model_, alpha=alpha)
        )
        return self._logits(model, X, self.processor_).numpy()

    def save(self, path) -> None:
        """Write the transferred classifier as a Hugging Face checkpoint folder (atomically), with
        τ_B in `task_vector.safetensors` and the settings in `tasklift_transfer.json`."""
        check_fitted(self, "model_")
        import json

        with atomic_dir(path) as tmp:
            self.model_.save_pretrained(tmp)
            if self.processor_ is not None:
                self.processor_.save_pretrained(tmp)
            self.task_vector_.save(tmp / "task_vector.safetensors", method=self.method)
            info = {
                "method": self.method,
                "alpha": self.alpha_,
                "val_scores": self.val_scores_,
                "token": self.token,
                "moved_params": self.moved_params_,
                "source_params": self.source_params_,
            }
            write_text(tmp / "tasklift_transfer.json", json.dumps(info, indent=2))
