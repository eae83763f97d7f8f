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
from fedleak.device import attack_precision, device_of, resolve_device
from fedleak.errors import ConfigError, DataError, UpdateError, brief, check_finite
from fedleak.fl.client import local_update
from fedleak.fl.threat import ThreatModel
from fedleak.fl.update import ClientUpdate


def observe(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    device: str | torch.device | None = None,
    **training: Any,
) -> ClientUpdate:
    """The update a server would receive from a client holding ``images`` and ``labels``.

    Keyword arguments are those of :func:`fedleak.fl.local_update` (``protocol="fedavg"``,
    ``local_steps``, ``batch_size``, ``lr``, ``optimizer``, ``bn_mode``, ...). ``model`` is not
    modified. ``device`` ("auto", "cpu", "cuda:N", ...; default: the model's device) is where
    the client trains; the update's tensors live there.

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
    model, dev = on_device(model, device)
    images, labels = images.to(dev), labels.to(dev)
    if images.ndim == 4:
        logits = _probe(model, images[:1], "`images`", tuple(images.shape[1:]))
        k = logits.shape[-1] if logits.ndim == 2 else None
        if k is not None and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise DataError(
                f"`labels` of observe must be class indices in [0, {k - 1}] (the model has {k} "
                f"outputs); got values in [{int(labels.min())}, {int(labels.max())}]."
            )
    return local_update(model, images, labels, **training)


def on_device(
    model: nn.Module, device: str | torch.device | None
) -> tuple[nn.Module, torch.device]:
    """``model`` on ``device`` (a copy when it has to move; default: where it already is)."""
    dev = device_of(model) if device is None else resolve_device(device)
    if device_of(model) != dev:
        model = copy.deepcopy(model).to(dev)
    return model, dev


def _update_to(update: ClientUpdate, dev: torch.device) -> ClientUpdate:
    if all(t.device == dev for t in (*update.tensors.values(), *update.buffers.values(),
                                     *update.shared.values())):
        return update
    move = lambda d: {k: v.to(dev) for k, v in d.items()}  # noqa: E731
    return update.replace(tensors=move(update.tensors), buffers=move(update.buffers),
                          shared=move(update.shared))


def _threat_to(threat: ThreatModel, dev: torch.device) -> ThreatModel:
    moved = {k: getattr(threat, k).to(dev) for k in ("labels", "prior", "public_data")
             if getattr(threat, k) is not None and getattr(threat, k).device != dev}
    return dataclasses.replace(threat, **moved) if moved else threat


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
    device: str | torch.device | None = None,
    memory_budget: float | int | None = None,
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
        device: where the attack runs ("auto", "cpu", "cuda:N", "mps"; default: the model's
            device). Every tensor the attack creates lives there; TF32 is off while it runs
            (:func:`fedleak.device.attack_precision`); the result's images are on the CPU.
        memory_budget: what batched restarts may use: a fraction of the free device memory
            (default 0.8, or ``FEDLEAK_MEMORY_BUDGET``) or a byte count; restarts run in chunks
            that fit, and a ConfigError says when not even one does.
        options: the attack's hyperparameters (``iterations``, ``restarts``, ...).

    The result's ``fit`` says whether the attack fitted the update (always filled in).
    """
    cls = ATTACKS.get(name)
    model, dev = on_device(model, device)
    # model-valued options (a diffusion prior) run beside the attacked model
    options = {k: on_device(v, dev)[0] if isinstance(v, nn.Module) else v
               for k, v in options.items()}
    atk = cls.create(**options)
    threat = threat or ThreatModel()
    threat.check(cls.requires, f"attack {name!r}")
    update, threat = _update_to(update, dev), _threat_to(threat, dev)
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
    if callback is not None and dev.type != "cpu":  # checkpoints reach the caller on the CPU
        user_callback = callback

        def callback(cp: Checkpoint) -> None:
            user_callback(dataclasses.replace(cp, images=cp.images.cpu()))

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
        memory_budget=memory_budget,
    )
    with attack_precision():
        rec = atk.reconstruct(inputs)
        if not bool(torch.isfinite(rec.images).all()):
            raise UpdateError(f"attack {name!r} produced non-finite images.")
        if truth is not None:
            truth = (truth[0].to(dev), None if truth[1] is None else truth[1].to(dev))
        fit = fit_check(atk, inputs, rec, truth)
    cpu = torch.device("cpu")  # results have one form on every device
    return dataclasses.replace(
        rec, fit=fit, images=rec.images.to(cpu),
        labels=None if rec.labels is None else rec.labels.to(cpu),
        restart_images=None if rec.restart_images is None else rec.restart_images.to(cpu),
    )


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
