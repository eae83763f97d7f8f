"""Noise schedules, the DDPM training loss and the samplers (DDPM ancestral, DDIM).

Conventions (documented once, used everywhere):

* Images outside this package are in [0, 1]; the network works in model space [-1, 1].
  :func:`to_model_space` maps in at the top of :func:`diffusion_loss`; the samplers map back
  with :func:`from_model_space` at the very end. Nothing else converts.
* Timesteps are 0-based: t in {0, ..., T-1}; ``alpha_bar[t]`` is the signal fraction after
  t + 1 noising steps. Float t (continuous relaxation) interpolates ``alpha_bar`` linearly.
* Noisy sample x_t = a x0 + s eps with a = sqrt(alpha_bar), s = sqrt(1 - alpha_bar);
  velocity v = a eps - s x0 (Salimans & Ho), so x0 = a x_t - s v and eps = s x_t + a v.
* Schedules: "cosine" (Nichol & Dhariwal, offset 0.008, betas clipped at 0.999) works for any
  T and is the default; "linear" is DDPM's 1e-4..0.02 scaled by 1000/T (clipped at 0.999), so
  T=1000 is the original and small T still ends near pure noise. The default T is 16, as in
  GIDM's public code (its linear schedule at T=16 would leave ~85 % of the signal at t=T-1,
  which is why we scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from fedleak.device import device_of
from fedleak.errors import ConfigError

SCHEDULES = ("cosine", "linear")
PREDICTIONS = ("v", "eps")


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> [-1, 1] (the only place data enters model space)."""
    return images * 2.0 - 1.0


def from_model_space(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model-space samples -> [0, 1] images (not clamped, so gradients stay alive)."""
    return (x + 1.0) * 0.5


def _betas(name: str, steps: int) -> torch.Tensor:
    if name == "cosine":
        s = 0.008
        x = torch.linspace(0, steps, steps + 1, dtype=torch.float64)
        f = torch.cos(((x / steps) + s) / (1 + s) * math.pi / 2) ** 2
        ab = f / f[0]
        return (1 - ab[1:] / ab[:-1]).clamp(max=0.999)
    if name == "linear":
        scale = 1000.0 / steps
        return torch.linspace(1e-4 * scale, min(0.02 * scale, 0.999), steps, dtype=torch.float64)
    raise ConfigError(f"`name` of NoiseSchedule must be one of {SCHEDULES}; got {name!r}.")


@dataclass(frozen=True)
class NoiseSchedule:
    """A DDPM noise schedule with T steps: ``NoiseSchedule("cosine", 16)``.

    ``spec`` ("cosine:16") is what a client update carries in its training metadata.
    """

    name: str = "cosine"
    steps: int = 16
    betas: torch.Tensor = field(init=False, repr=False, compare=False)
    alphas_cumprod: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ConfigError(
                f"`name` of NoiseSchedule must be one of {', '.join(SCHEDULES)}; "
                f"got {self.name!r}."
            )
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 2:
            raise ConfigError(f"`steps` of NoiseSchedule must be an int >= 2; got {self.steps!r}.")
        betas = _betas(self.name, self.steps)
        object.__setattr__(self, "betas", betas.float())
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1 - betas, 0).float())

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.steps}"

    @classmethod
    def from_spec(cls, spec: str | NoiseSchedule) -> NoiseSchedule:
        """Parse "cosine:16" (or pass a schedule through)."""
        if isinstance(spec, NoiseSchedule):
            return spec
        name, _, steps = str(spec).partition(":")
        try:
            return cls(name.strip(), int(steps))
        except ValueError:
            raise ConfigError(
                f"schedule spec must look like 'cosine:16' or 'linear:1000'; got {spec!r}."
            ) from None

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar at integer or float t (linear interpolation between steps, clamped)."""
        table = self.alphas_cumprod.to(t.device)
        if not t.is_floating_point():
            return table[t.long()]
        tc = t.clamp(0, self.steps - 1)
        lo = tc.floor().long().clamp(max=self.steps - 2)
        w = tc - lo
        return table[lo] * (1 - w) + table[lo + 1] * w

    def coefs(self, t: torch.Tensor, ndim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, s) = (sqrt(alpha_bar), sqrt(1 - alpha_bar)) shaped to broadcast over images."""
        ab = self.alpha_bar(t).reshape(-1, *([1] * (ndim - 1)))
        return ab.sqrt(), (1 - ab).clamp_min(0).sqrt()

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a, s = self.coefs(t, x0.dim())
        return a * x0 + s * eps

    def target(
        self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, prediction: str
    ) -> torch.Tensor:
        """What the network learns to output: eps, or v = a eps - s x0."""
        if prediction == "eps":
            return eps
        a, s = self.coefs(t, x0.dim())
        return a * eps - s * x0

    def predict_x0_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor, prediction: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) implied by the network output ``out`` at (x_t, t)."""
        a, s = self.coefs(t, x_t.dim())
        if prediction == "eps":
            return (x_t - s * out) / a, out
        return a * x_t - s * out, s * x_t + a * out


def check_prediction(prediction: str, caller: str) -> str:
    if prediction not in PREDICTIONS:
        raise ConfigError(
            f"`prediction` of {caller} must be 'v' or 'eps'; got {prediction!r}."
        )
    return prediction


def diffusion_loss(
    model: nn.Module,
    images: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    schedule: NoiseSchedule,
    prediction: str = "v",
) -> torch.Tensor:
    """DDPM training loss, mean squared error of the prediction over batch and pixels.

    ``images`` are in [0, 1] (mapped to model space here); ``t`` (N,), ``eps`` like images.
    """
    x0 = to_model_space(images)
    x_t = schedule.q_sample(x0, t, eps)
    target = schedule.target(x0, t, eps, prediction)
    return (model(x_t, t) - target).pow(2).mean()


def ddim_timesteps(schedule: NoiseSchedule, k: int) -> list[int]:
    """K timesteps from T-1 down to 0, evenly spaced (both ends included)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= schedule.steps:
        raise ConfigError(
            f"`steps` of the DDIM sampler must be an int in [1, {schedule.steps}]; got {k!r}."
        )
    if k == 1:
        return [schedule.steps - 1]
    pts = torch.linspace(schedule.steps - 1, 0, k).round().long().tolist()
    return sorted(set(pts), reverse=True)


def ddim_sample(
    model: nn.Module,
    x_T: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    steps: int | None = None,
    prediction: str = "v",
    clip: bool = False,
) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from the initial noise ``x_T``; returns [0, 1] images.

    Differentiable: gradients flow through every step to ``x_T`` and the model's weights (the
    GIDM generator). ``clip`` clamps the x0 estimate to [-1, 1] at each step (nicer samples,
    but zero gradient outside the box, so attacks leave it off). The output is not clamped.
    """
    ts = ddim_timesteps(schedule, steps or schedule.steps)
    x = x_T
    n = x.shape[0]
    for i, t in enumerate(ts):
        tt = torch.full((n,), t, dtype=torch.long, device=x.device)
        x0, eps = schedule.predict_x0_eps(x, tt, model(x, tt), prediction)
        if clip:
            x0 = x0.clamp(-1, 1)
        if i + 1 == len(ts):
            x = x0
        else:
            ab_prev = schedule.alphas_cumprod[ts[i + 1]].to(x.device)
            x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
    return from_model_space(x)


@torch.no_grad()
def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device):
    """Normal noise on ``device``, drawn on the generator's device (reproducible per generator)."""
    gen_device = generator.device if generator is not None else device
    x = torch.randn(shape, generator=generator, device=gen_device)
    return x.to(device)


def ddpm_sample(
    model: nn.Module,
    shape: tuple[int, ...],
    schedule: NoiseSchedule,
    *,
    prediction: str = "v",
    generator: torch.Generator | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """Ancestral DDPM sampling over all T steps (posterior variance beta_tilde); [0, 1] images."""
    dev = device_of(model)
    x = _randn(shape, generator, dev)
    ab = schedule.alphas_cumprod.to(dev)
    for t in range(schedule.steps - 1, -1, -1):
        tt = torch.full((shape[0],), t, dtype=torch.long, device=dev)
        x0, _ = schedule.predict_x0_eps(x, tt, model(x, tt), prediction)
        if clip:
            x0 = x0.clamp(-1, 1)
        if t == 0:
            x = x0
            break
        ab_t, ab_prev, beta = ab[t], ab[t - 1], schedule.betas[t].to(dev)
        mean = (ab_prev.sqrt() * beta / (1 - ab_t)) * x0 + (
            (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab_t)
        ) * x
        var = beta * (1 - ab_prev) / (1 - ab_t)
        x = mean + var.sqrt() * _randn(shape, generator, dev)
    return from_model_space(x).clamp(0, 1)
