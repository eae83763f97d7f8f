"""The attacker's prior: the same UNet trained on public data of the clients' domain.

GIDM uses a well-trained diffusion model as an image generator (threat level D: surrogate
data). :func:`train_prior` trains one on a public split in minutes on a CPU (Adam, EMA of the
weights, horizontal flips); :func:`save_model` / :func:`load_model` store it as a plain state
dict plus a JSON config, loaded with ``weights_only=True`` (no pickled code is ever run).
A trained model carries ``model.diffusion_meta = {"prediction": ..., "schedule": ...}`` so
samplers know how to read its output.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedleak.device import generator_for, resolve_device
from fedleak.diffusion.client import draw_noise
from fedleak.diffusion.schedule import NoiseSchedule, check_prediction, diffusion_loss
from fedleak.diffusion.unet import UNet, UNetConfig
from fedleak.errors import ConfigError, DataError

FORMAT = "fedleak-diffusion-unet/1"


def diffusion_meta(model: nn.Module) -> dict[str, str] | None:
    """The prediction type and schedule spec a trained model was trained with (if recorded)."""
    meta = getattr(model, "diffusion_meta", None)
    return dict(meta) if isinstance(meta, dict) else None


def train_prior(
    images: torch.Tensor,
    *,
    config: UNetConfig | None = None,
    schedule: NoiseSchedule | str = "cosine:16",
    prediction: str = "v",
    steps: int = 3000,
    batch_size: int = 64,
    lr: float = 2e-3,
    ema: float = 0.995,
    flip: bool = True,
    seed: int = 0,
    log: Callable[[int, float], None] | None = None,
    log_every: int = 250,
    device: str | torch.device | None = None,
) -> UNet:
    """Train a :class:`UNet` on ``images`` (N, C, H, W) in [0, 1]; returns the EMA weights.

    Adam with cosine learning-rate decay; ``flip`` adds horizontal flips (faces, not digits).
    ``log(step, mean loss)`` is called every ``log_every`` steps.
    """
    caller = "train_prior"
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[0] < 1:
        raise ConfigError(f"`images` of {caller} must be a non-empty (N, C, H, W) tensor.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"`steps` of {caller} must be an int >= 1; got {steps!r}.")
    schedule = NoiseSchedule.from_spec(schedule)
    prediction = check_prediction(prediction, caller)
    _, c, h, w = images.shape
    if h != w:
        raise ConfigError(f"`images` of {caller} must be square; got {h}x{w}.")
    cfg = config or UNetConfig(image_size=h, in_channels=c, num_timesteps=schedule.steps)
    dev = images.device if device is None else resolve_device(device)
    images = images.to(dev)
    torch.manual_seed(seed)
    model = UNet(cfg).to(dev)  # initialized on the CPU (same weights on every device)
    avg = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = generator_for(dev, seed)
    n = images.shape[0]
    running, count = 0.0, 0
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen, device=gen.device)
        x = images[idx]
        if flip:
            mask = torch.rand(x.shape[0], generator=gen, device=gen.device) < 0.5
            x = torch.where(mask[:, None, None, None], x.flip(-1), x)
        t, eps = draw_noise(x.shape[0], tuple(x.shape[1:]), schedule, gen)
        loss = diffusion_loss(model, x, t, eps, schedule, prediction)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(ema, (1 + step) / (10 + step))
            for pa, pm in zip(avg.parameters(), model.parameters(), strict=True):
                pa.lerp_(pm, 1 - decay)
        running += float(loss.detach())
        count += 1
        if log is not None and (step % log_every == 0 or step == steps):
            log(step, running / count)
            running, count = 0.0, 0
    avg.eval()
    for p in avg.parameters():
        p.requires_grad_(False)
    avg.diffusion_meta = {"prediction": prediction, "schedule": schedule.spec}
    return avg


def save_model(
    model: UNet,
    path: str | Path,
    *,
    prediction: str | None = None,
    schedule: NoiseSchedule | str | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write the UNet's state dict and a JSON config (architecture, prediction, schedule)."""
    if not isinstance(model, UNet):
        raise ConfigError(f"`model` of save_model must be a fedleak UNet; got {type(model)}.")
    meta = diffusion_meta(model) or {}
    pred = prediction or meta.get("prediction", "v")
    sched = NoiseSchedule.from_spec(schedule or meta.get("schedule", "cosine:16"))
    header = {
        "format": FORMAT,
        "unet": model.config.to_dict(),
        "prediction": check_prediction(pred, "save_model"),
        "schedule": sched.spec,
        "info": info or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "config": json.dumps(header)}, path)
    return path


def load_model(path: str | Path) -> UNet:
    """Load a UNet written by :func:`save_model` (``weights_only=True``); frozen, eval mode.

    Any missing, truncated or foreign file raises :class:`~fedleak.errors.DataError`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such model file (expected one written by save_model).")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        header = json.loads(payload["config"])
        if header.get("format") != FORMAT:
            raise ValueError(f"format {header.get('format')!r}")
        model = UNet(UNetConfig.from_dict(header["unet"]))
        model.load_state_dict(payload["state_dict"])
        pred = check_prediction(header["prediction"], "load_model")
        sched = NoiseSchedule.from_spec(header["schedule"])
    except Exception as exc:  # noqa: BLE001 - any failure means "not our format"
        raise DataError(
            f"{path}: not a fedleak diffusion model ({type(exc).__name__}: {exc})."
        ) from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.diffusion_meta = {"prediction": pred, "schedule": sched.spec}
    model.info = header.get("info", {})
    return model


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(result, seconds): for benchmark reports of prior training time."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def prior_for(
    path: str | Path | None,
    public: torch.Tensor,
    *,
    cache: Path,
    schedule: NoiseSchedule | str,
    prediction: str,
    steps: int = 1000,
    flip: bool = False,
    seed: int = 0,
    log: Callable[[str], None] = lambda m: None,
    device: str | torch.device | None = None,
) -> UNet:
    """The attacker's prior: the user's saved model at ``path``, else one trained on ``public``.

    A trained prior is saved to ``cache`` (and reused from there on a rerun or resume), so the
    minutes of training are spent once. ``flip`` adds horizontal flips (faces, not digits).
    A model trained with another schedule or prediction than the victim's is refused: its DDIM
    generator would not be the domain's.
    """
    schedule = NoiseSchedule.from_spec(schedule)
    source = Path(path) if path is not None else cache
    if path is not None or cache.is_file():
        model = load_model(source)
        meta = diffusion_meta(model) or {}
        if meta.get("schedule") != schedule.spec or meta.get("prediction") != prediction:
            raise ConfigError(
                f"{source}: the prior was trained with {meta.get('prediction')}-prediction on "
                f"{meta.get('schedule')}, the clients use {prediction}-prediction on "
                f"{schedule.spec}."
            )
        return model
    log(f"training the prior on {len(public)} public images, {steps} steps -> {cache}")
    model = train_prior(
        public, schedule=schedule, prediction=prediction, steps=steps,
        batch_size=min(32, len(public)), flip=flip, seed=seed,
        log=lambda s, loss: log(f"  prior step {s}: loss {loss:.4f}"), log_every=250,
        device=device,
    )
    save_model(model, cache, info={"images": len(public), "steps": steps, "seed": seed})
    return model
