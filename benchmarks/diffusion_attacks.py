"""Gradient inversion of federated diffusion models (GIDM, GIDM+) on 16x16 built-in data.

Why: the diffusion attacks' claims and defaults rest on these numbers. Setting: the victim is
an untrained fedleak UNet (about 96k parameters, v-prediction, cosine schedule, T = 16), one
FedSGD gradient per client; the clients' images come from the test split of ``--data``
(``lfw-faces``: faces only). The attacker's prior is the same UNet trained on the train split
(data no client holds; threat level D), in minutes on the CPU, cached under ``--out``.

* A. eps and t shared in the clear, batch 1: "diffusion-ig" (pixel matching). Target >= 30 dB.
* B. eps and t private, batch 1, ``--trials`` clients: "gidm-plus" (prior) against the same
  attack without the prior ("diffusion-ig", joint_noise=True, same t search, restarts and total
  iterations). Targets: t recovered in >= 90 % of trials; PSNR >= 3 dB above the baseline.
  Also the accuracy of the other t searches (closed-form "embedding", "relaxed").
* C. eps and t shared, batch ``--batch-c``: "gidm" against its phase 1 alone and the no-prior
  baseline at equal iterations, with PSNR measured along the way (Checkpoint callback).

PSNR uses max = 1 on [0, 1] images (the GIDM code's max = 255 adds 48 dB: not comparable).
Every PSNR is printed next to the flat-image baseline. The truth is used for scoring only.
Grids (originals / phase 1 / final) and a JSON of all numbers go to ``--out`` (default
``benchmarks/out/``, git-ignored).

    python benchmarks/diffusion_attacks.py            # full run (long on a busy 2-core CPU)
    python benchmarks/diffusion_attacks.py --quick    # smoke run: small prior, 2 trials
    python benchmarks/diffusion_attacks.py --resume   # continue a killed run (same settings)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import fedleak
from fedleak.attacks.diffusion import embedding_residuals
from fedleak.data import load_dataset
from fedleak.diffusion import (
    NoiseSchedule,
    UNet,
    UNetConfig,
    count_parameters,
    ddim_sample,
    diffusion_update,
    load_model,
    save_model,
    train_prior,
)
from fedleak.fl.threat import ThreatModel
from fedleak.metrics import match, score_images
from fedleak.report import save_grid

SCHEDULE = NoiseSchedule("cosine", 16)
PREDICTION = "v"
EVERY = 50  # checkpoint interval for the PSNR-vs-iterations curves


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small prior, 2 trials")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    p.add_argument("--data", default="lfw-faces", choices=["lfw-faces", "digits", "mnist-5k"])
    p.add_argument("--trials", type=int, default=None, help="clients in B (default 10; quick 2)")
    p.add_argument("--prior", type=Path, default=None, help="a saved prior to use instead")
    p.add_argument("--prior-steps", type=int, default=None, help="default 2000 (quick 300)")
    p.add_argument("--restarts", type=int, default=None, help="default 8 (quick 2)")
    p.add_argument("--iterations", type=int, default=None, help="B total (default 600)")
    p.add_argument("--batch-c", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip", default="", help="experiments to skip, e.g. 'A,C'")
    p.add_argument("--resume", action="store_true",
                   help="reuse trials a killed run with the same settings finished")
    return p.parse_args()


def split_images(data: str, split: str) -> torch.Tensor:
    ds = load_dataset(data, size=16, split=split)
    return ds.images[ds.labels == 0] if data == "lfw-faces" else ds.images


def get_prior(args: argparse.Namespace, public: torch.Tensor, steps: int) -> tuple[Any, dict]:
    """Load ``--prior`` or the cached prior for (data, steps), else train and cache it."""
    path = args.prior or args.out / f"diffusion_prior_{args.data}_{steps}.pt"
    if path.is_file():
        model = load_model(path)
        return model, {"path": str(path), "trained_now": False, **getattr(model, "info", {})}
    print(f"training the prior on {len(public)} public {args.data} images, {steps} steps ...")
    start = time.perf_counter()
    model = train_prior(
        public, schedule=SCHEDULE, prediction=PREDICTION, steps=steps, batch_size=32,
        flip=args.data == "lfw-faces",
        log=lambda s, loss: print(f"  step {s}: loss {loss:.4f}", flush=True), log_every=500,
    )
    seconds = time.perf_counter() - start
    info = {"data": args.data, "split": "train", "images": len(public), "steps": steps,
            "seconds": round(seconds, 1)}
    save_model(model, path, info=info)
    print(f"  trained in {seconds:.0f} s -> {path}")
    return model, {"path": str(path), "trained_now": True, **info}


class Progress:
    """Finished trials (numbers and images), saved after each one so ``--resume`` can skip them.

    Why: a full run takes an hour or more on a shared 2-core CPU; a killed run should not start
    over. Entries are reused only when the settings they were measured with are identical.
    """

    def __init__(self, path: Path, settings: dict[str, Any], resume: bool) -> None:
        self.path, self.key = path, json.dumps(settings, sort_keys=True, default=str)
        self.rows: dict[str, str] = {}
        self.images: dict[str, dict[str, torch.Tensor]] = {}
        if resume and path.is_file():
            saved = torch.load(path, weights_only=True)
            if saved.get("settings") == self.key:
                self.rows, self.images = dict(saved["rows"]), dict(saved["images"])
                print(f"resuming: {len(self.rows)} finished trial(s) from {path}")

    def get(self, key: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
        if key not in self.rows:
            return None
        return json.loads(self.rows[key]), self.images[key]

    def put(self, key: str, row: dict[str, Any], images: dict[str, torch.Tensor]) -> None:
        self.rows[key] = json.dumps(row)
        self.images[key] = {k: v.detach().cpu() for k, v in images.items()}
        torch.save({"settings": self.key, "rows": self.rows, "images": self.images}, self.path)


def victim(seed: int) -> UNet:
    torch.manual_seed(1000 + seed)
    return UNet(UNetConfig(num_timesteps=SCHEDULE.steps))


def client_noise(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The client's own t and eps (drawn here so the benchmark can score t; never shared)."""
    g = torch.Generator().manual_seed(5000 + seed)
    return torch.randint(0, SCHEDULE.steps, (n,), generator=g), torch.randn(n, 1, 16, 16,
                                                                           generator=g)


def pick(images: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return images[torch.randperm(len(images), generator=g)[:n]]


def scored(rec: Any, x: torch.Tensor) -> dict[str, float]:
    s = score_images(rec.images if hasattr(rec, "images") else rec, x)
    return {"psnr": s["psnr"], "ssim": s["ssim"], "mse": s["mse"], "flat_psnr": s["flat_psnr"]}


def curve_recorder(x: torch.Tensor) -> tuple[list[tuple[int, float]], Any]:
    """A Checkpoint callback recording (cumulative iteration, PSNR) across phases."""
    points: list[tuple[int, float]] = []
    state = {"offset": 0, "last": 0}

    def callback(cp: Any) -> None:
        if cp.iteration < state["last"]:  # a new phase restarted the counter
            state["offset"] += state["last"]
        state["last"] = cp.iteration
        points.append((state["offset"] + cp.iteration, score_images(cp.images, x)["psnr"]))

    return points, callback


def at(points: list[tuple[int, float]], it: int) -> float:
    """PSNR at the last checkpoint at or before ``it``."""
    vals = [p for i, p in points if i <= it]
    return vals[-1] if vals else float("nan")


def fmt(v: float) -> str:
    return f"{v:6.2f}"


# ------------------------------------------------------------------------------ experiments


def experiment_a(args: argparse.Namespace, private: torch.Tensor, trials: int) -> dict:
    print("\nA. eps and t shared, batch 1: diffusion-ig (300 iterations)")
    rows = []
    for k in range(trials):
        x = pick(private, 1, 10 + k)
        model = victim(k)
        t, eps = client_noise(1, k)
        upd = diffusion_update(model, x, t=t, epsilon=eps, share_noise=True, schedule=SCHEDULE,
                               prediction=PREDICTION)
        start = time.perf_counter()
        rec = fedleak.attack("diffusion-ig", model, upd, iterations=300, seed=k)
        s = scored(rec, x)
        rows.append({**s, "t": t.tolist(), "seconds": time.perf_counter() - start})
        print(f"  trial {k}: t={t.item():2d}  PSNR {fmt(s['psnr'])} (flat {fmt(s['flat_psnr'])})"
              f"  SSIM {s['ssim']:.3f}  {rows[-1]['seconds']:.0f} s", flush=True)
        if k == 0:
            save_grid(args.out / "diffusion_A_known_noise.png", [x, rec.images],
                      row_titles=["original", "diffusion-ig"])
    return {"rows": rows, "psnr_mean": statistics.fmean(r["psnr"] for r in rows)}


def trial_b(
    k: int, x: torch.Tensor, prior: Any, cfg: dict, common: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """One private-noise client: gidm-plus, the no-prior baseline and the other t searches."""
    total = cfg["iterations"]
    p1 = total // 3
    model = victim(100 + k)
    t, eps = client_noise(1, 100 + k)
    upd = diffusion_update(model, x, t=t, epsilon=eps, share_noise=False, schedule=SCHEDULE,
                           prediction=PREDICTION)
    assert not upd.shared
    row: dict[str, Any] = {"t": t.item()}
    start = time.perf_counter()
    rec = fedleak.attack(
        "gidm-plus", model, upd, threat=ThreatModel("D"), prior_model=prior,
        phase1_iterations=p1, phase2_iterations=total - p1, ddim_steps=cfg["ddim_steps"],
        **common,
    )
    row["gidm_plus"] = {**scored(rec, x), "t": rec.extras["t"][0],
                        "t_distances": rec.extras["t_distances"][0],
                        "phase1_psnr": scored(rec.extras["phase1_images"], x)["psnr"],
                        "seconds": time.perf_counter() - start}
    start = time.perf_counter()
    base = fedleak.attack("diffusion-ig", model, upd, joint_noise=True, iterations=total, **common)
    row["no_prior"] = {**scored(base, x), "t": base.extras["t"][0],
                       "seconds": time.perf_counter() - start}
    resid, _ = embedding_residuals(model, dict(upd.tensors), range(SCHEDULE.steps), 1)
    row["t_embedding"] = int(resid.argmin())
    if cfg["relaxed"]:
        relaxed = fedleak.attack(
            "diffusion-ig", model, upd, joint_noise=True, iterations=1, t_search="relaxed",
            t_candidates=[1, 5, 10, 14], search_iterations=150, seed=0,
        )
        row["t_relaxed"] = relaxed.extras["t"][0]
    imgs = {"phase1": rec.extras["phase1_images"], "final": rec.images, "no_prior": base.images}
    return row, imgs


def experiment_b(
    args: argparse.Namespace, private: torch.Tensor, prior: Any, cfg: dict, progress: Progress
) -> dict:
    trials, restarts, total = cfg["trials"], cfg["restarts"], cfg["iterations"]
    print(f"\nB. eps and t private, batch 1, {trials} clients: gidm-plus vs no prior "
          f"({restarts} restarts, t search + {total} iterations each)")
    common = {"restarts": restarts, "t_search": "enumerate", "seed": 0}
    rows = []
    originals, phase1s, finals, baselines = [], [], [], []
    for k in range(trials):
        x = pick(private, 1, 100 + k)
        done = progress.get(f"B{k}")
        if done is not None:
            row, imgs = done
        else:
            row, imgs = trial_b(k, x, prior, cfg, common)
            progress.put(f"B{k}", row, imgs)
        rows.append(row)
        g, b = row["gidm_plus"], row["no_prior"]
        print(f"  client {k}: t={row['t']:2d} | gidm-plus t={g['t']:2d} PSNR {fmt(g['psnr'])} "
              f"(phase 1 {fmt(g['phase1_psnr'])}) {g['seconds']:4.0f} s | no prior "
              f"t={b['t']:2d} PSNR {fmt(b['psnr'])} {b['seconds']:4.0f} s | flat "
              f"{fmt(g['flat_psnr'])} | t embedding {row['t_embedding']:2d}"
              + (f", relaxed {row['t_relaxed']:2d}" if "t_relaxed" in row else "")
              + (" (resumed)" if done is not None else ""), flush=True)
        originals.append(x)
        phase1s.append(imgs["phase1"])
        finals.append(imgs["final"])
        baselines.append(imgs["no_prior"])
    save_grid(
        args.out / "diffusion_B_private_noise.png",
        [torch.cat(originals), torch.cat(phase1s), torch.cat(finals), torch.cat(baselines)],
        row_titles=["original", "gidm+ phase 1", "gidm+ final", "no prior"],
        captions=[
            [f"t={r['t']}" for r in rows],
            [f"{r['gidm_plus']['phase1_psnr']:.1f}" for r in rows],
            [f"{r['gidm_plus']['psnr']:.1f} t={r['gidm_plus']['t']}" for r in rows],
            [f"{r['no_prior']['psnr']:.1f}" for r in rows],
        ],
    )

    def summary(key: str) -> dict[str, float]:
        ps = [r[key]["psnr"] for r in rows]
        return {
            "psnr_mean": statistics.fmean(ps),
            "psnr_median": statistics.median(ps),
            "ssim_mean": statistics.fmean(r[key]["ssim"] for r in rows),
            "success_30db": sum(p >= 30 for p in ps) / len(ps),
            "t_accuracy": sum(r[key]["t"] == r["t"] for r in rows) / len(rows),
            "seconds_mean": statistics.fmean(r[key]["seconds"] for r in rows),
        }

    out = {
        "rows": rows,
        "gidm_plus": summary("gidm_plus"),
        "no_prior": summary("no_prior"),
        "t_accuracy_embedding": sum(r["t_embedding"] == r["t"] for r in rows) / len(rows),
        "flat_psnr_mean": statistics.fmean(r["gidm_plus"]["flat_psnr"] for r in rows),
        "settings": cfg,
    }
    if cfg["relaxed"]:
        out["t_accuracy_relaxed"] = sum(r["t_relaxed"] == r["t"] for r in rows) / len(rows)
    return out


def experiment_c(
    args: argparse.Namespace, private: torch.Tensor, prior: Any, cfg: dict, progress: Progress
) -> dict:
    n, total, trials = args.batch_c, cfg["c_iterations"], cfg["c_trials"]
    p1 = total // 3
    print(f"\nC. eps and t shared, batch {n}: gidm vs its phase 1 alone vs no prior, "
          f"{total} iterations each ({cfg['restarts_c']} restart(s))")
    runs = {
        "gidm": ("gidm", {"phase1_iterations": p1, "phase2_iterations": total - p1}),
        "phase 1 only": ("gidm", {"phase1_iterations": total, "phase2_iterations": 0}),
        "no prior": ("diffusion-ig", {"iterations": total}),
    }
    rows = []
    for k in range(trials):
        x = pick(private, n, 200 + k)
        done = progress.get(f"C{k}")
        if done is not None:
            row, imgs = done
            rows.append(row)
            grid = [imgs[str(i)] for i in range(len(imgs))]
            report_c(row, runs, total, k, args, n, grid, resumed=True)
            continue
        model = victim(200 + k)
        t, eps = client_noise(n, 200 + k)
        upd = diffusion_update(model, x, t=t, epsilon=eps, share_noise=True, schedule=SCHEDULE,
                               prediction=PREDICTION)
        row = {"t": t.tolist()}
        grid = [x]
        for label, (name, opts) in runs.items():
            points, callback = curve_recorder(x)
            extra = (
                {"prior_model": prior, "ddim_steps": cfg["ddim_steps"]} if name == "gidm" else {}
            )
            start = time.perf_counter()
            rec = fedleak.attack(
                name, model, upd, threat=ThreatModel("D"), restarts=cfg["restarts_c"], seed=k,
                callback=callback, checkpoint_every=EVERY, **opts, **extra,
            )
            s = scored(rec, x)
            row[label] = {**s, "curve": points, "seconds": time.perf_counter() - start}
            order = match(rec.images, x)[0]  # show each reconstruction under its original
            if label == "gidm":
                row[label]["phase1_psnr"] = scored(rec.extras["phase1_images"], x)["psnr"]
                grid.append(rec.extras["phase1_images"][order])  # the same slots, phase 1
            grid.append(rec.images[order])
        progress.put(f"C{k}", row, {str(i): g for i, g in enumerate(grid)})
        rows.append(row)
        report_c(row, runs, total, k, args, n, grid, resumed=False)

    def mean(label: str, key: str = "psnr") -> float:
        return statistics.fmean(r[label][key] for r in rows)

    return {"rows": rows, "batch": n, "iterations": total,
            **{f"{label}_psnr_mean": mean(label) for label in runs}}


def report_c(
    row: dict[str, Any], runs: dict, total: int, k: int, args: argparse.Namespace, n: int,
    grid: list[torch.Tensor], resumed: bool,
) -> None:
    """Print one C trial (final PSNR and PSNR along the way) and save its grid."""
    marks = sorted({max(EVERY, total // 4 // EVERY * EVERY), total // 2 // EVERY * EVERY, total})
    print(f"  trial {k} (flat {fmt(row['gidm']['flat_psnr'])}){' (resumed)' if resumed else ''}:")
    for label in runs:
        curve = [tuple(p) for p in row[label]["curve"]]
        print(f"    {label:13s} final PSNR {fmt(row[label]['psnr'])}  SSIM "
              f"{row[label]['ssim']:.3f}  | at " + ", ".join(
                  f"{m}: {fmt(at(curve, m))}" for m in marks)
              + f"  {row[label]['seconds']:.0f} s", flush=True)
    save_grid(args.out / f"diffusion_C_gidm_b{n}_{k}.png", grid,
              row_titles=["original", "gidm phase 1", "gidm final", "phase 1 only", "no prior"])


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    skip = {s.strip().upper() for s in args.skip.split(",") if s.strip()}
    quick = args.quick
    cfg = {
        "trials": args.trials or (2 if quick else 10),
        "restarts": args.restarts or (2 if quick else 8),
        "iterations": args.iterations or (150 if quick else 600),
        "ddim_steps": 8,
        "relaxed": not quick,
        "c_iterations": 150 if quick else 400,
        "c_trials": 1 if quick else 2,
        "restarts_c": 1,
    }
    prior_steps = args.prior_steps or (300 if quick else 2000)
    public, private = split_images(args.data, "train"), split_images(args.data, "test")
    print(f"data {args.data} 16x16: {len(public)} public (prior), {len(private)} private images;"
          f" victim UNet {count_parameters(victim(0))} parameters, {SCHEDULE.spec}, "
          f"{PREDICTION}-prediction, FedSGD")
    prior, prior_info = get_prior(args, public, prior_steps)
    with torch.no_grad():
        samples = ddim_sample(prior, torch.randn(16, 1, 16, 16,
                              generator=torch.Generator().manual_seed(0)), SCHEDULE,
                              prediction=PREDICTION, clip=True).clamp(0, 1)
    save_grid(args.out / "diffusion_prior_samples.png", [public[:16], samples],
              row_titles=["public data", "prior DDIM"])
    results: dict[str, Any] = {"data": args.data, "prior": prior_info, "quick": quick,
                               "settings": cfg}
    if "A" not in skip:
        results["A"] = experiment_a(args, private, 1 if quick else 3)
    progress = Progress(
        args.out / "diffusion_progress.pt",
        {**cfg, "data": args.data, "prior": prior_info.get("path"), "batch_c": args.batch_c},
        args.resume,
    )
    if "B" not in skip:
        results["B"] = experiment_b(args, private, prior, cfg, progress)
    if "C" not in skip:
        results["C"] = experiment_c(args, private, prior, cfg, progress)
    print_table(results)
    path = args.out / "diffusion_attacks.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nresults: {path}; grids: {args.out}/diffusion_*.png")


def print_table(r: dict[str, Any]) -> None:
    print("\n| experiment | attack | PSNR (dB) | flat | SSIM | t acc | target | met |")
    print("|---|---|---|---|---|---|---|---|")
    if "A" in r:
        a = r["A"]
        flat = statistics.fmean(x["flat_psnr"] for x in a["rows"])
        ssim = statistics.fmean(x["ssim"] for x in a["rows"])
        ok = a["psnr_mean"] >= 30
        print(f"| A known eps,t b1 | diffusion-ig | {a['psnr_mean']:.2f} | {flat:.2f} | "
              f"{ssim:.3f} | given | >= 30 dB | {'yes' if ok else 'NO'} |")
    if "B" in r:
        b = r["B"]
        g, n = b["gidm_plus"], b["no_prior"]
        gap = g["psnr_mean"] - n["psnr_mean"]
        print(f"| B private eps,t b1 | gidm-plus | {g['psnr_mean']:.2f} (median "
              f"{g['psnr_median']:.2f}, >=30 dB in {g['success_30db']:.0%}) | "
              f"{b['flat_psnr_mean']:.2f} | {g['ssim_mean']:.3f} | {g['t_accuracy']:.0%} | "
              f"t >= 90 % | {'yes' if g['t_accuracy'] >= 0.9 else 'NO'} |")
        print(f"| B private eps,t b1 | no prior (diffusion-ig joint) | {n['psnr_mean']:.2f} "
              f"(median {n['psnr_median']:.2f}, >=30 dB in {n['success_30db']:.0%}) | "
              f"{b['flat_psnr_mean']:.2f} | {n['ssim_mean']:.3f} | {n['t_accuracy']:.0%} | "
              f"gidm+ >= +3 dB | {'yes' if gap >= 3 else 'NO'} ({gap:+.2f}) |")
        extra = f"embedding {b['t_accuracy_embedding']:.0%}"
        if "t_accuracy_relaxed" in b:
            extra += f", relaxed {b['t_accuracy_relaxed']:.0%}"
        print(f"| B t search | other searches | | | | {extra} | | |")
    if "C" in r:
        c = r["C"]
        g, p, n = c["gidm_psnr_mean"], c["phase 1 only_psnr_mean"], c["no prior_psnr_mean"]
        for label, v in (("gidm", g), ("phase 1 only", p), ("no prior", n)):
            met = ""
            if label == "gidm":
                met = f"beats both: {'yes' if g > p and g > n else 'NO'}"
            print(f"| C known eps,t b{c['batch']}, {c['iterations']} it | {label} | {v:.2f} | "
                  f"| | given | | {met} |")


if __name__ == "__main__":
    main()
