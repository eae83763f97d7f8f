"""Preflight: does the update fit the model and the stated training, before any attack runs?

The usual reason a gradient-inversion audit of a real pipeline gives nonsense is a mismatch
between what the tool assumes and what the client ran: BatchNorm in train vs eval mode, missing
buffers, normalization inside vs outside the model, a gradient read as a delta, a wrong
learning rate. Every check here reads only what the server has (the global model, the update,
the stated settings) and returns findings; each says what to fix. Errors are mismatches that
make the attack meaningless; :meth:`Preflight.raise_errors` refuses them.

Two bounds do the size checks. For a mean cross-entropy loss the classifier bias gradient is
``mean_b(p_b - y_b)``, whose L1 norm is at most 2: one SGD step moves the bias by at most
``2 lr`` in L1, and with momentum m step k by at most ``2 lr (1 - m^k) / (1 - m)``. Adam moves
each parameter by at most about ``lr (1 - b1) / sqrt(1 - b2)`` per step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from fedleak.errors import UpdateError
from fedleak.fl.update import ClientUpdate

Level = Literal["error", "warning", "info"]
STOCHASTIC = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
              nn.FeatureAlphaDropout)


@dataclass(frozen=True)
class Finding:
    """One preflight result: ``level`` (error, warning, info), the check's name, the message."""

    level: Level
    check: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Preflight:
    """All findings of :func:`preflight`, in check order."""

    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    def checks(self, level: str | None = None) -> set[str]:
        """Names of the checks that reported (at ``level``, or any)."""
        return {f.check for f in self.findings if level is None or f.level == level}

    def to_dict(self) -> dict[str, Any]:
        return {
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [f.to_dict() for f in self.findings],
        }

    def raise_errors(self) -> None:
        """Raise one :class:`UpdateError` listing every error (none: return)."""
        if self.errors:
            raise UpdateError(
                "preflight found mismatches that make the attack meaningless: "
                + " | ".join(f"({f.check}) {f.message}" for f in self.errors)
            )


def _bias_bound_per_step(cfg: Any, steps: int) -> float:
    """Largest L1 move of the classifier bias that ``steps`` SGD steps of the config allow."""
    m = cfg.momentum if cfg.optimizer == "sgd" else 0.0
    total = sum((1 - m ** (k + 1)) / (1 - m) if m else 1.0 for k in range(steps))
    return 2.0 * cfg.lr * total


def _classifier_bias(model: nn.Module) -> str | None:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears or linears[-1][1].bias is None:
        return None
    return f"{linears[-1][0]}.bias"


def preflight(
    model: nn.Module,
    update: ClientUpdate,
    *,
    client_keys: Sequence[str] | None = None,
    assumed: Sequence[str] = (),
    input_transform: str | None = None,
    truth_range: tuple[float, float] | None = None,
    image_shape: tuple[int, int, int] | None = None,
    transform: nn.Module | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Preflight:
    """Check ``update`` against ``model`` (holding the global weights) and the stated training.

    Args:
        model: the user's model with the global weights loaded (not modified).
        update: the update as the server received it (names as in ``model``).
        client_keys: every key of the client's file, to report entries the model lacks.
        assumed: settings the server did not know and assumed (``"momentum=0.0"``, ...).
        input_transform: the stated pipeline transform (e.g. ``"mean 0.5 std 0.5"``), or None.
        truth_range: (min, max) of the truth images when given, to catch normalized data.
        image_shape: (C, H, W); enables the replay check: the stated training replayed on
            random images must give an update of about the received size.
        transform: the stated input transform as a module (pixels in [0, 1] -> model input).
        settings: the training settings as stated; what they leave out is reported as
            assumed (as ``assumed`` does, for callers that computed it already).
    """
    if settings is not None and not assumed:
        from fedleak.fl.artifacts import training_from_settings

        assumed = training_from_settings(settings, kind=update.kind,
                                         num_samples=update.num_samples)[2]
    out: list[Finding] = []
    add = lambda level, check, msg: out.append(Finding(level, check, msg))  # noqa: E731
    params = {k: p for k, p in model.named_parameters()}
    trainable = [k for k, p in params.items() if p.requires_grad]
    cfg = update.training

    # --- coverage: names and shapes ---------------------------------------------------------
    missing = [k for k in trainable if k not in update.tensors]
    extra = [k for k in update.tensors if k not in params]
    shapes = [k for k, t in update.tensors.items() if k in params and params[k].shape != t.shape]
    if extra:
        add("error", "coverage",
            f"{len(extra)} update tensors are not parameters of the model (e.g. {extra[:3]}): "
            "the update comes from another architecture, or names differ (a 'module.' prefix "
            "from DataParallel?); fix --model-def/--model-arg or rename the keys.")
    if shapes:
        k = shapes[0]
        add("error", "shapes",
            f"{len(shapes)} tensors differ in shape from the model, e.g. {k!r}: update "
            f"{tuple(update.tensors[k].shape)}, model {tuple(params[k].shape)}; fix the model "
            "options (width, classes) to match the checkpoint.")
    if missing:
        add("warning", "coverage",
            f"{len(missing)} trainable parameters have no update entry (e.g. {missing[:3]}): "
            "the attack keeps them at their global values; if the client trained them, the "
            "update file is incomplete (save the full state_dict).")
    if client_keys is not None:
        own = set(model.state_dict())
        stray = [k for k in client_keys if k not in own]
        if stray:
            add("warning", "coverage",
                f"{len(stray)} entries of the client's file are not in the model (e.g. "
                f"{stray[:3]}); they are ignored. Check that the model definition matches.")

    # --- BatchNorm: buffers sent? changed? counter vs steps ----------------------------------
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    mode = cfg.bn_mode if cfg is not None else None
    if bns:
        tracked = [n for n, m in bns.items() if m.track_running_stats]
        sent = [n for n in tracked if f"{n}.running_mean" in update.buffers]
        if tracked and not sent:
            add("warning", "bn-buffers",
                f"the model has {len(tracked)} BatchNorm layers but the update carries none of "
                "their buffers: whether the client ran BN in train or eval mode cannot be "
                f"checked (assumed {mode or 'train'}); send the full state_dict, buffers "
                "included, to verify it.")
        elif sent:
            g = dict(model.named_buffers())
            changed = [n for n in sent if not torch.equal(
                update.buffers[f"{n}.running_mean"].to(g[f"{n}.running_mean"]),
                g[f"{n}.running_mean"])]
            if mode == "train" and not changed:
                add("error", "bn-mode",
                    "BatchNorm running statistics are unchanged, so the client ran BN in eval "
                    "mode (model.eval() during training, or frozen BN), but train mode is "
                    "stated: set bn_mode=eval (--bn-mode eval).")
            elif mode == "eval" and changed:
                add("error", "bn-mode",
                    f"BatchNorm running statistics changed in {len(changed)} layers, so the "
                    "client ran BN in train mode, but eval mode is stated: set bn_mode=train.")
            counters = [
                int(update.buffers[f"{n}.num_batches_tracked"].item())
                - int(g[f"{n}.num_batches_tracked"].item())
                for n in sent
                if f"{n}.num_batches_tracked" in update.buffers
                and f"{n}.num_batches_tracked" in g
            ]
            if counters and cfg is not None and mode == "train":
                seen = max(counters)
                if seen not in (0, cfg.local_steps):
                    add("error", "bn-steps",
                        f"num_batches_tracked grew by {seen}, so the client ran {seen} "
                        f"training forwards, but {cfg.local_steps} local steps are stated: "
                        f"set steps={seen} (or the epochs and batch size that give it).")
    if mode is None and bns:
        add("warning", "bn-mode", "the BatchNorm mode is unknown (no training settings): "
            "the attack assumes train mode.")

    # --- sample count --------------------------------------------------------------------------
    if update.num_samples is None:
        add("warning", "num-samples",
            "the number of client samples is missing: state num_samples (--num-samples), "
            "else the attack cannot know how many images to rebuild.")

    # --- gradient or delta? is its size plausible for the stated lr and steps? ---------------
    size = _size_checks(model, update)
    out.extend(size)
    if image_shape is not None and not any(f.level == "error" for f in size):
        out.extend(_replay_check(model, update, image_shape, transform))

    # --- assumptions the server had to make ----------------------------------------------------
    if assumed:
        add("warning", "assumed",
            "not stated, so assumed: " + ", ".join(assumed) + ". If the client trained "
            "otherwise, state it (flags or a training YAML); the size check says whether "
            "lr and steps fit the update.")

    # --- inputs: normalization inside the model, stated transform, truth range -------------
    norm = [(n, m) for n, m in model.named_modules()
            if "normaliz" in type(m).__name__.lower() and not isinstance(m, nn.LayerNorm)]
    if norm and input_transform:
        add("warning", "normalization",
            f"the model normalizes its input itself ({norm[0][0] or 'root'}: "
            f"{type(norm[0][1]).__name__}) and an input transform ({input_transform}) is "
            "stated too: the data would be normalized twice. Drop the stated transform unless "
            "your pipeline really does both.")
    elif norm:
        add("info", "normalization",
            f"the model normalizes inside ({type(norm[0][1]).__name__}): it expects pixels "
            "in [0, 1]; the attack optimizes pixels in [0, 1].")
    elif input_transform:
        span = ""
        if transform is not None and hasattr(transform, "mean") and hasattr(transform, "std"):
            lo = ((0 - transform.mean) / transform.std).min().item()
            hi = ((1 - transform.mean) / transform.std).max().item()
            span = f"; the model sees inputs in [{lo:.3g}, {hi:.3g}]"
        add("info", "normalization",
            f"pixels in [0, 1] go through the stated transform ({input_transform}) before the "
            f"model, for the attack and the scoring alike{span}.")
    else:
        add("warning", "normalization",
            "the model does not normalize its input and no input transform is stated: the "
            "attack feeds it pixels in [0, 1]. If your data pipeline normalizes (e.g. "
            "Normalize((0.5,), (0.5,)) or z-scoring), state it with --input-mean/--input-std "
            "or --input-range, or the reconstruction is scored on the wrong scale.")
    if truth_range is not None and (truth_range[0] < -1e-4 or truth_range[1] > 1 + 1e-4):
        add("error", "truth-range",
            f"the truth images range over [{truth_range[0]:.3g}, {truth_range[1]:.3g}], not "
            "[0, 1]: they are already normalized. Pass raw pixels and state the transform.")

    # --- stochastic layers ---------------------------------------------------------------------
    drops = [n for n, m in model.named_modules()
             if (isinstance(m, STOCHASTIC) and m.p > 0)
             or ("droppath" in type(m).__name__.lower() or "stochasticdepth"
                 in type(m).__name__.lower())]
    if drops:
        add("warning", "stochastic",
            f"{len(drops)} stochastic layers (e.g. {drops[0]!r}) were active in the client's "
            "training; the attack runs them deterministically (off), so it cannot match the "
            "update exactly. Expect a worse fit; for an exact audit train with dropout 0.")
    return Preflight(tuple(out))


def _size_checks(model: nn.Module, update: ClientUpdate) -> list[Finding]:
    out: list[Finding] = []
    cfg = update.training
    norms = {k: float(t.float().abs().sum()) for k, t in update.tensors.items()}
    if all(v == 0 for v in norms.values()):
        return [Finding("error", "empty",
                        "every update tensor is zero: the client did not train (a failed or "
                        "skipped fit, or the global weights saved as the client's).")]
    params = dict(model.named_parameters())
    if update.kind == "delta":
        common = [k for k in update.tensors
                  if k in params and params[k].shape == update.tensors[k].shape]
        dot = sum(float((update.tensors[k].double() * params[k].detach().double()).sum())
                  for k in common)
        un = sum(float(update.tensors[k].double().pow(2).sum()) for k in common) ** 0.5
        wn = sum(float(params[k].detach().double().pow(2).sum()) for k in common) ** 0.5
        if un > 0 and wn > 0 and dot / (un * wn) > 0.95:  # a delta is not aligned with weights
            out.append(Finding(
                "error", "kind",
                "the update points the same way as the global weights (cosine > 0.95): it "
                "looks like the client's absolute weights passed as the update; pass them as the "
                "client state (--client / from_states), which subtracts the global weights."))
            return out
    bias = _classifier_bias(model)
    if bias is None or bias not in update.tensors:
        out.append(Finding("info", "size", "no classifier bias in the update: the size of the "
                           "update cannot be checked against lr and steps."))
        return out
    b = update.tensors[bias].double()
    l1 = float(b.abs().sum())
    if update.kind == "gradient":
        if l1 > 2.0 * 1.05:
            out.append(Finding(
                "error", "kind",
                f"the classifier bias gradient has L1 norm {l1:.3g}, above the bound 2 of a "
                "mean cross-entropy gradient: this is not a FedSGD gradient of the mean loss "
                "(a delta or weights passed as a gradient, or a summed loss)."))
        return out
    if cfg is None:
        return out
    if cfg.optimizer == "adam":
        scale = (1 - cfg.betas[0]) / (1 - cfg.betas[1]) ** 0.5
        bound = cfg.lr * cfg.local_steps * max(1.0, scale) * 1.05
        worst = max(float(t.abs().max()) for t in update.tensors.values())
        if worst > bound:
            out.append(Finding(
                "error", "size",
                f"a parameter moved by {worst:.3g}, but Adam with lr={cfg.lr:g} moves each "
                f"parameter at most ~{bound:.3g} in {cfg.local_steps} steps: the stated lr or "
                "steps are too small (or a gradient/weights were passed as a delta)."))
        return out
    wd = cfg.weight_decay * float(params[bias].detach().abs().sum()) if cfg.weight_decay else 0.0
    bound = _bias_bound_per_step(cfg, cfg.local_steps) * (1 + wd) * 1.05
    if l1 > bound:
        what = "the stated lr or number of steps is too small"
        if l1 <= 2.1:
            what += (", or this is a gradient passed as a delta (a FedSGD gradient goes to "
                     "--update / kind='gradient', not --client)")
        out.append(Finding(
            "error", "size",
            f"the classifier bias moved by {l1:.3g} (L1), but {cfg.local_steps} SGD steps at "
            f"lr={cfg.lr:g}, momentum {cfg.momentum:g} move it at most {bound:.3g}: {what}."))
    elif l1 < 1e-3 * bound:
        out.append(Finding(
            "warning", "size",
            f"the classifier bias moved by only {l1:.3g} (L1), under 0.1% of what "
            f"{cfg.local_steps} steps at lr={cfg.lr:g} allow ({bound:.3g}): the stated lr or "
            "steps may be too large, or the model already fits these images perfectly."))
    return out


# the received update may be this many times larger or smaller than the replay: measured on
# 4-image clients (tests/test_preflight.py) correct settings give 0.5-0.9, unstated momentum
# 0.9 1.5, an lr 20x too small 15+; so only gross mismatches are flagged
REPLAY_TOLERANCE = 3.0


def _replay_check(
    model: nn.Module,
    update: ClientUpdate,
    image_shape: tuple[int, int, int],
    transform: nn.Module | None,
    simulations: int = 4,
) -> list[Finding]:
    """Replay the stated training on random images; compare the update's size with it.

    A heuristic, hence a warning: real images give updates of the same order as random ones
    carrying the labels the update reveals, for a model that has not learned them; a wrong lr
    or step count shows up as a ratio far from 1. Small mismatches (unstated momentum) stay
    within the tolerance: the "assumed" warning names them instead.
    """
    from fedleak.fl.client import local_update

    cfg, n = update.training, update.num_samples
    if cfg is None or n is None or (update.kind == "delta" and cfg.lr <= 0):
        return []
    names = [k for k in update.tensors]
    got = sum(float(update.tensors[k].double().pow(2).sum()) for k in names) ** 0.5
    sims = []
    gen = torch.Generator().manual_seed(0)  # cpu generator: the same draws on every device
    param = next(model.parameters())
    labels = _labels_of(model, update, n, image_shape)
    for _ in range(simulations):
        x = torch.rand((n, *image_shape), generator=gen).to(param)
        if transform is not None:
            x = transform.to(param)(x)
        if labels is None:
            y = torch.randint(0, _classes(model, x), (n,), generator=gen).to(param.device)
        else:  # the labels the update reveals, in a random order (the batches are unknown)
            y = labels[torch.randperm(n, generator=gen)].to(param.device)
        opts: dict[str, Any] = {"protocol": cfg.protocol, "lr": cfg.lr or 0.01,
                                "bn_mode": cfg.bn_mode}
        if update.kind == "delta":
            opts |= {"local_steps": cfg.local_steps, "batch_size": cfg.batch_size,
                     "optimizer": cfg.optimizer, "momentum": cfg.momentum,
                     "weight_decay": cfg.weight_decay, "betas": cfg.betas}
        try:
            sim = local_update(model, x, y, **opts)
        except Exception:  # noqa: BLE001 - a model the simulation cannot train: skip the check
            return []
        sims.append(sum(float(sim.tensors[k].double().pow(2).sum())
                        for k in names if k in sim.tensors) ** 0.5)
    expected = sum(sims) / len(sims)
    if expected <= 0:
        return []
    ratio = got / expected
    what = ("update" if update.kind == "delta" else "gradient")
    stated = (f"lr={cfg.lr:g}, {cfg.local_steps} steps of {cfg.batch_size}, {cfg.optimizer}"
              f" momentum {cfg.momentum:g}" if update.kind == "delta" else "a mean-loss gradient")
    msg = (f"the {what} is {ratio:.2g} times the size of the stated training ({stated}) "
           f"replayed on random images")
    if 1 / REPLAY_TOLERANCE <= ratio <= REPLAY_TOLERANCE:
        return [Finding("info", "replay", msg + ": plausible.")]
    return [Finding(
        "warning", "size",
        msg + ": the client's lr, number of steps, momentum or batch size probably differ "
        "from the stated ones (or the model has already learned these images); state them.")]


def _classes(model: nn.Module, x: torch.Tensor) -> int:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:1])
    finally:
        model.train(was)
    from fedleak.models.adapter import find_logits

    return int(find_logits(out).shape[-1])


def _labels_of(
    model: nn.Module, update: ClientUpdate, n: int, image_shape: tuple[int, int, int]
) -> torch.Tensor | None:
    """The labels recovered from the update (label counts vary the update's size most)."""
    from fedleak.attacks.labels import recover_labels

    try:
        return recover_labels(model, update, n, image_shape)[0].reshape(-1).long()
    except Exception:  # noqa: BLE001 - no linear head, or a model it cannot simulate
        return None
