"""Inverting Gradients' TV weight, chosen per update during the run (``tv="auto"``).

Why: no single TV weight suits every setting, and the attacker knows neither the images nor
the truth's PSNR, so the choice must come from the update alone.

How: every candidate weight of ``tv_grid`` starts as its own restart (``restarts`` each), all
batched in one run. For the first ``search_fraction`` of the iterations they all follow their
own objective (1 - cosine + tv * TV) on the run's own step schedule; then only the restart whose
gradient-matching term (the cosine distance alone) is lowest goes on, with its Adam state, to
the end (``optimize``'s ``select_after``). TV is part of the objective, so objectives are not
comparable across weights (a smaller weight always scores lower); the matching term is. The same
term picks each restart's best iterate and the returned restart. The truth is never used.

Cost: ``len(tv_grid) * restarts`` rows for ``search_fraction`` of the run, then one row:
3 x 0.25 + 0.75 = 1.5 runs with the defaults. The step size is not searched: Adam's steps do
not depend on the gradient's scale, so rows of one batched run cannot have their own step size.

Measured (issue 16; see docs/attacks.md): short separate runs with their own (compressed)
schedule ranked the weights wrongly (on the flatten head, batch 1, the 100-iteration runs'
matching terms picked tv 0.03, 42 dB at 1,000 iterations, against 49 dB for 1e-2 and 60 for 0),
which is why the candidates share the full run's schedule here.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from fedleak.attacks.base import AttackInputs, Reconstruction
from fedleak.errors import ConfigError

#: TV weights tried by ``tv="auto"`` (the fixed default is 1e-2)
TV_GRID = (0.0, 1e-3, 1e-2)
#: share of the run during which every candidate weight runs
FRACTION = 0.25


def check_grid(values: Any, caller: str) -> tuple[float, ...]:
    """``values`` as a non-empty tuple of numbers >= 0, or a ConfigError."""
    scalar = isinstance(values, int | float) and not isinstance(values, bool)
    items = (values,) if scalar else values
    try:
        out = tuple(float(v) for v in items if not isinstance(v, bool))
        ok = len(out) == len(tuple(items)) and len(out) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok or not all(math.isfinite(v) and v >= 0 for v in out):
        raise ConfigError(
            f"`tv_grid` of {caller} must be a non-empty list of numbers >= 0; got {values!r}."
        )
    return out


def reconstruct_auto(attack: Any, inputs: AttackInputs) -> Reconstruction:
    """Inverting Gradients with one batch of restarts per candidate TV weight (module doc)."""
    from fedleak.attacks import inverting as ig
    from fedleak.attacks.optimize import optimize, total_variation
    from fedleak.attacks.selection import pick_restart
    from fedleak.attacks.simulate import CosineDistance

    start = time.perf_counter()
    grid = attack.tv_grid
    rows = attack.restarts * len(grid)
    who = f"attack {attack.name!r}"
    x0 = ig.initial_images(inputs, attack.init, rows, who)
    y = ig.attack_labels(inputs, rows, who)
    setup = ig.matching_setup(inputs, fedavg=attack.fedavg, layers=attack.layers,
                              scheme=attack.layer_weights)
    if setup.fedavg_mode == "replay":  # which labels shared a batch: spread over the rows
        y = ig.restart_labels(inputs, rows)
    row_tv = [grid[i % len(grid)] for i in range(rows)]
    tvs = torch.tensor(row_tv, device=x0.device, dtype=x0.dtype)
    sim = setup.simulator
    distance = CosineDistance(setup.target, setup.weights)

    def objective(v: dict[str, torch.Tensor]) -> torch.Tensor:
        match = distance(sim(v["images"], v["labels"]))
        total = match + v["tv"] * total_variation(v["images"])
        # gradient: the full objective; value (best iterate, selection): the matching term
        return total - total.detach() + match.detach()

    select_after = attack.search_fraction if rows > 1 and attack.search_fraction < 1 else None
    res = optimize(
        {"images": x0}, objective, inputs, iterations=attack.iterations, lr=attack.lr,
        signed=attack.signed, schedule=attack.schedule, project=ig.clamp_images(),
        fresh=ig.retry_images(inputs, attack.init, rows), who=who,
        chunk=ig.restart_chunk(inputs, rows), select_after=select_after,
        constants={"labels": y, "tv": tvs},
    )
    best = pick_restart(res.best["images"], res.best_loss, attack.select)
    chosen = row_tv[best]
    object.__setattr__(attack, "_chosen_tv", chosen)  # for objective_at (not a field)
    extras = {**setup.extras, "restarts": rows, "init": attack.init, "tv": chosen,
              "tv_grid": list(grid), "retried": res.retried, "select": attack.select,
              "search_iterations": int(round(attack.search_fraction * attack.iterations))
              * (rows - 1) if select_after is not None else 0,
              "select_at": int(select_after * attack.iterations) if select_after else None,
              "restart_tv": row_tv, "restart_match": res.best_loss.tolist()}
    return ig.finish(attack, inputs, res, y, start, extras, best)
