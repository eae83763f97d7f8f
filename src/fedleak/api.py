"""The front door: observe what a client sends, attack it, score the reconstruction."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fedleak.attacks import (
    ATTACKS,
    Attack,
    AttackInputs,
    Checkpoint,
    Reconstruction,
    recover_labels,
)
from fedleak.attacks.fit import FitCheck, verdict
from fedleak.attacks.labels import last_linear
from fedleak.errors import ConfigError, DataError, UpdateError, brief, check_finite
from fedleak.fl.client import local_update
from fedleak.fl.threat import ThreatModel
from fedleak.fl.update import ClientUpdate


def observe(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **training: Any
) -> ClientUpdate:
    """The update a server would receive from a client holding ``images`` and ``labels``.

    Keyword arguments are those of :func:`fedleak.fl.local_update` (``protocol="fedavg"``,
    ``local_steps``, ``batch_size``, ``lr``, ``optimizer``, ``bn_mode``, ...). ``model`` is not
    modified.

    Raises:
        DataError: images outside [0, 1], or labels outside the model's classes.
        ConfigError: images whose shape the model cannot take.
    """
    if torch.is_tensor(images) and images.numel() and images.is_floating_point():
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise DataError(
                f"`images` of observe must lie in [0, 1] (models normalize inside); got values "
                f"in [{lo:.3g}, {hi:.3g}]: pass the unnormalized images."
            )
    if torch.is_tensor(images) and images.ndim == 4 and torch.is_tensor(labels):
        logits = _probe(model, images[:1], "`images`", tuple(images.shape[1:]))
        k = logits.shape[-1] if logits.ndim == 2 else None
        if k is not None and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise DataError(
                f"`labels` of observe must be class indices in [0, {k - 1}] (the model has {k} "
                f"outputs); got values in [{int(labels.min())}, {int(labels.max())}]."
            )
    return local_update(model, images, labels, **training)


def _probe(model: nn.Module, x: torch.Tensor, what: str, shape: tuple[int, ...]) -> torch.Tensor:
    """One no-grad forward of ``x`` on a copy in eval mode: a shape error becomes one line."""
    probe = copy.deepcopy(model).eval()
    try:
        with torch.no_grad():
            out = probe(x)
    except TypeError:  # a forward with more inputs (a diffusion UNet takes t): not ours to probe
        return torch.empty(0)
    except RuntimeError as exc:
        raise ConfigError(
            f"{what} (C, H, W) = {shape} does not fit the model ({brief(exc)}); pass the "
            "shape the model was built for."
        ) from None
    return out if torch.is_tensor(out) else torch.empty(0)


def attack(
    name: str,
    model: nn.Module,
    update: ClientUpdate,
    *,
    threat: ThreatModel | None = None,
    num_images: int | None = None,
    image_shape: tuple[int, int, int] | None = None,
    seed: int = 0,
    callback: Callable[[Checkpoint], None] | None = None,
    checkpoint_every: int = 100,
    progress: Callable[[int, float], None] | None = None,
    truth: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    **options: Any,
) -> Reconstruction:
    """Reconstruct the client's images from ``update`` with the attack ``name``.

    Args:
        model: the global model the client started from (not modified).
        threat: what the attacker knows (default: level C, labels not granted).
        num_images: how many images to rebuild (default: the update's ``num_samples``,
            which needs level C).
        image_shape: (C, H, W); default ``model.input_shape`` (set by fedleak's models).
        callback: receives a :class:`Checkpoint` every ``checkpoint_every`` iterations; the
            place where a simulation that knows the truth can score progress.
        truth: (images, labels) where a simulation knows them: used after the attack, only
            for the fit check's verdict (:mod:`fedleak.attacks.fit`), never to choose anything.
        options: the attack's hyperparameters (``iterations``, ``restarts``, ...).

    The result's ``fit`` says whether the attack fitted the update (always filled in).
    """
    cls = ATTACKS.get(name)
    atk = cls.create(**options)
    threat = threat or ThreatModel()
    threat.check(cls.requires, f"attack {name!r}")
    if update.kind not in cls.handles:
        raise ConfigError(
            f"attack {name!r} handles {sorted(cls.handles)} updates, not {update.kind!r}."
        )
    view = threat.view(update)
    view.check_matches(model)
    n = num_images if num_images is not None else view.num_samples
    if n is None or n < 1:
        if threat.knows("training_details"):
            raise ConfigError(
                "`num_images` of attack is unknown: the update carries no sample count "
                "(num_samples is missing); pass num_images=... or state num_samples."
            )
        raise ConfigError(
            "`num_images` of attack is unknown: pass num_images=... or grant the number of "
            "samples (threat level C)."
        )
    shape = image_shape or getattr(model, "input_shape", None)
    if shape is None:
        raise ConfigError("`image_shape` of attack is needed for a model without `input_shape`.")
    shape = tuple(int(s) for s in shape)
    check_finite({**view.tensors, **view.buffers}, "client update")
    param = next(model.parameters(), None)
    _probe(model, torch.zeros((1, *shape), device=None if param is None else param.device),
           "`image_shape`", shape)
    num_classes = _num_classes(model, granted=threat.labels is not None) if cls.uses_labels else 0
    labels, method = None, "none"
    if threat.labels is not None:
        labels, method = threat.granted_labels(), "granted"  # a multiset unless ordered
        if labels.numel() != n:
            raise ConfigError(
                f"`labels` of ThreatModel must hold {n} labels; got {labels.numel()}."
            )
    elif cls.uses_labels:
        labels, method = recover_labels(model, view, n, shape, seed=seed)  # type: ignore[arg-type]
    inputs = AttackInputs(
        model=model,
        update=view,
        threat=threat,
        num_images=n,
        image_shape=shape,  # type: ignore[arg-type]
        num_classes=num_classes,
        labels=labels,
        label_method=method,
        seed=seed,
        callback=callback,
        checkpoint_every=max(1, checkpoint_every),
        progress=progress,
    )
    rec = atk.reconstruct(inputs)
    if not bool(torch.isfinite(rec.images).all()):
        raise UpdateError(f"attack {name!r} produced non-finite images.")
    return dataclasses.replace(rec, fit=fit_check(atk, inputs, rec, truth))


def _num_classes(model: nn.Module, *, granted: bool) -> int:
    """Classes of the classifier; with granted labels the last layer need not be nn.Linear."""
    try:
        return last_linear(model)[1].out_features
    except ConfigError:
        known = getattr(model, "num_classes", None)
        if granted and isinstance(known, int):
            return known
        if granted:
            raise ConfigError(
                "the model has no nn.Linear classifier and no `num_classes` attribute: set "
                "model.num_classes (fedleak.models.adapter.adapt_model does)."
            ) from None
        raise ConfigError(
            "label recovery needs a model whose last layer is an nn.Linear; grant the labels "
            "(ThreatModel(labels=...), --grant-labels) to attack this model."
        ) from None


def fit_check(
    atk: Attack,
    inputs: AttackInputs,
    rec: Reconstruction,
    truth: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> FitCheck:
    """The fit check of ``rec``: its objective, and the truth's where ``truth`` is known."""
    at_rec = atk.objective_at(inputs, rec.images, rec.labels)
    if at_rec is None:
        return FitCheck(
            verdict="unchecked",
            attack_objective=float("nan"),
            attack_residual=float("nan"),
            note=f"attack {atk.name!r} has no objective to check",
        )
    at_truth = None
    if truth is not None:
        images, labels = truth
        at_truth = atk.objective_at(inputs, images, labels)
    return verdict(at_rec, at_truth)


def score(
    reconstruction: Reconstruction | torch.Tensor,
    images: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Best-match scores of a reconstruction against the true images (after the attack).

    Returns at least ``mse``, ``psnr`` and ``ssim`` (means over Hungarian-paired images), their
    per-image values, the flat-image PSNR baseline, ``label_accuracy`` when ``labels`` are
    given and ``rdlv`` when a ``prior`` image is given.
    """
    from fedleak.metrics import score_images

    if isinstance(reconstruction, Reconstruction):
        rec_images, rec_labels = reconstruction.images, reconstruction.labels
    else:
        rec_images, rec_labels = reconstruction, None
    return score_images(rec_images, images, rec_labels=rec_labels, labels=labels, prior=prior)
