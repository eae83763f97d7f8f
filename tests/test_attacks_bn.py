"""BatchNorm-statistics inference, the bn-fedavg attack and the analytic attack."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from fedleak.api import attack, observe, score
from fedleak.attacks import AttackInputs
from fedleak.attacks.bn_fedavg import BNFedAvg
from fedleak.attacks.bnstats import bn_spatial_sizes, infer_batch_stats, step_weights
from fedleak.attacks.optimize import init_images
from fedleak.errors import ConfigError, InsufficientKnowledgeError, UpdateError
from fedleak.fl import ThreatModel
from fedleak.metrics import psnr
from fedleak.models import bn_layers, build_model

SHAPE = (1, 16, 16)


def _convnet(seed: int = 0, classes: int = 3, shape=SHAPE):
    torch.manual_seed(seed)
    return build_model(
        "convnet", input_shape=shape, num_classes=classes, widths=(4, 8, 8), pool_after=(0, 1)
    )


def _smooth_images(n: int, shape=SHAPE, seed: int = 1) -> torch.Tensor:
    """Natural-ish test images: upsampled coarse noise (attacks are not asked to invert noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, shape[0], shape[1] // 4, shape[2] // 4, generator=g)
    return F.interpolate(coarse, size=shape[1:], mode="bilinear", align_corners=False)


def _record_stats(net: torch.nn.Module) -> tuple[dict[str, list], list]:
    """Forward hooks recording each BN layer's input (mean, biased var) per forward."""
    rec: dict[str, list] = {name: [] for name, _ in bn_layers(net)}

    def make(name: str):
        def hook(mod, inp, out):
            x = inp[0].detach()
            rec[name].append((x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)))

        return hook

    hooks = [m.register_forward_hook(make(name)) for name, m in bn_layers(net)]
    return rec, hooks


# ------------------------------------------------------------------------- bnstats


def test_step_weights_sum_to_one_and_favour_the_last_step() -> None:
    w = step_weights(0.1, 4)
    assert float(w.sum()) == pytest.approx(1.0)
    assert bool((w[1:] > w[:-1]).all())
    assert step_weights(0.1, 1).tolist() == pytest.approx([1.0])


def test_infer_batch_stats_one_step_equals_true_batch_stats() -> None:
    model = _convnet()
    images, labels = torch.rand(6, *SHAPE), torch.tensor([0, 1, 2, 0, 1, 2])
    update = observe(model, images, labels)  # FedSGD: one train-mode forward
    net = copy.deepcopy(model).train()
    rec, _ = _record_stats(net)
    net(images)
    est = infer_batch_stats(
        dict(model.named_buffers()), update.buffers, 0.1, 1, [6],
        spatial=bn_spatial_sizes(model, SHAPE),
    )  # fmt: skip
    assert set(est) == set(rec)
    for name, (mean, var) in est.items():
        torch.testing.assert_close(mean, rec[name][0][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(var, rec[name][0][1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n,batch,steps", [(6, 2, 3), (4, 2, 4), (5, 2, 3)])
def test_infer_batch_stats_k_steps_is_the_weighted_mean(n: int, batch: int, steps: int) -> None:
    model = _convnet()
    images, labels = torch.rand(n, *SHAPE), torch.arange(n) % 3
    lr, seed = 0.1, 7
    update = observe(
        model, images, labels, protocol="fedavg", lr=lr, local_steps=steps, batch_size=batch,
        seed=seed,
    )  # fmt: skip
    sizes = update.training.batch_sizes
    # the same local training by hand, recording every step's batch statistics
    net = copy.deepcopy(model).train()
    rec, _ = _record_stats(net)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    done = 0
    while done < steps:
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, batch):
            if done == steps:
                break
            idx = order[s : s + batch]
            opt.zero_grad()
            F.cross_entropy(net(images[idx]), labels[idx]).backward()
            opt.step()
            done += 1
    w = step_weights(0.1, steps).float()
    est = infer_batch_stats(
        dict(model.named_buffers()), update.buffers, 0.1, steps, sizes,
        spatial=bn_spatial_sizes(model, SHAPE),
    )  # fmt: skip
    equal = len(set(sizes)) == 1
    for name, (mean, var) in est.items():
        true_mean = sum(w[k] * rec[name][k][0] for k in range(steps))
        true_var = sum(w[k] * rec[name][k][1] for k in range(steps))
        torch.testing.assert_close(mean, true_mean, atol=1e-5, rtol=0)
        # unequal batch sizes: the unbiased->biased conversion is an approximation
        tol = 1e-5 if equal else 2e-2
        torch.testing.assert_close(var, true_var, atol=tol, rtol=tol)


def test_infer_batch_stats_rejects_updates_without_buffers() -> None:
    with pytest.raises(UpdateError, match="BatchNorm"):
        infer_batch_stats({}, {}, 0.1, 1)


# ------------------------------------------------------------------------- bn-fedavg


TINY = (1, 8, 8)


def _fedavg_case(seed: int = 0):
    """Two 8x8 images, a two-block ConvNet, FedAvg with 2 local steps of batch 1."""
    torch.manual_seed(seed)
    model = build_model("convnet", input_shape=TINY, num_classes=2, widths=(4, 8), pool_after=(0,))
    images = _smooth_images(2, TINY)
    labels = torch.tensor([0, 1])
    update = observe(
        model, images, labels, protocol="fedavg", lr=0.1, local_steps=2, batch_size=1, seed=3
    )
    return model, images, labels, update


def _inputs(model, update, labels, threat=None) -> AttackInputs:
    return AttackInputs(
        model=model, update=update, threat=threat or ThreatModel(labels=labels),
        num_images=labels.numel(), image_shape=TINY, num_classes=2, labels=labels,
        label_method="granted",
    )  # fmt: skip


def test_bn_fedavg_update_term_carries_gradient_and_true_images_fit() -> None:
    model, images, labels, update = _fedavg_case()
    atk = BNFedAvg()
    terms = atk.objective(_inputs(model, update, labels))
    x = torch.rand(1, 2, *TINY, requires_grad=True)
    t = terms(x)
    assert set(t) >= {"update", "bn", "tv", "l2"}
    (gx,) = torch.autograd.grad(t["update"].sum(), x, retain_graph=True)
    assert float(gx.abs().sum()) > 0  # the published code's update term had none
    (gb,) = torch.autograd.grad(t["bn"].sum(), x)
    assert float(gb.abs().sum()) > 0
    # the true images in the client's batch order reproduce update and statistics
    order = torch.randperm(2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        truth = terms(images[order][None])
        noise = terms(x.detach())
    assert float(truth["update"][0]) < 1e-6
    assert float(truth["bn"][0]) < 1e-3
    assert float(noise["bn"][0]) > 100 * float(truth["bn"][0])


def test_bn_fedavg_beats_its_init_and_leaves_the_model_alone() -> None:
    model, images, labels, update = _fedavg_case()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    threat = ThreatModel(labels=labels)
    rec = attack("bn-fedavg", model, update, threat=threat, iterations=100, seed=0)
    init = init_images("random", (1, 2, *TINY), torch.Generator().manual_seed(0))[0]
    got = score(rec, images)["psnr"]
    assert got > score(init, images)["psnr"] + 3
    assert rec.loss_history[-1] < rec.loss_history[0]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], atol=0, rtol=0)


def test_bn_fedavg_refuses_without_information() -> None:
    model, images, labels, update = _fedavg_case()
    threat = ThreatModel(labels=labels)
    with pytest.raises(UpdateError, match="buffers"):
        attack("bn-fedavg", model, update.replace(buffers={}), threat=threat, iterations=1)
    evaluated = observe(
        model, images, labels, protocol="fedavg", lr=0.1, local_steps=2, batch_size=1,
        bn_mode="eval",
    )  # fmt: skip
    with pytest.raises(UpdateError, match="eval mode"):
        attack("bn-fedavg", model, evaluated, threat=threat, iterations=1)
    with pytest.raises(InsufficientKnowledgeError):
        attack("bn-fedavg", model, update, threat=ThreatModel(level="B"), num_images=2)
    mlp = build_model("mlp", input_shape=TINY, num_classes=2)
    with pytest.raises(UpdateError, match="BatchNorm"):
        attack("bn-fedavg", mlp, observe(mlp, images, labels), threat=threat, iterations=1)


# ------------------------------------------------------------------------- analytic


@pytest.mark.parametrize(
    "train",
    [{}, {"protocol": "fedavg", "lr": 0.1, "local_steps": 3, "momentum": 0.9},
     {"protocol": "fedavg", "lr": 0.05, "weight_decay": 1e-3}],
)  # fmt: skip
def test_analytic_is_exact_on_an_mlp_with_one_image(train: dict) -> None:
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(1, 32, 32), num_classes=10)
    image = _smooth_images(1, (1, 32, 32))
    update = observe(model, image, torch.tensor([3]), **train)
    rec = attack("analytic", model, update)
    assert rec.labels is None and rec.images.shape == image.shape
    assert float(psnr(rec.images, image)[0]) > 60


def test_analytic_separates_a_batch_only_when_exact() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10)
    images = _smooth_images(8, (1, 8, 8), seed=2)
    labels = torch.arange(8)
    update = observe(model, images[:2], labels[:2])
    rec = attack("analytic", model, update)
    assert score(rec, images[:2])["psnr"] > 60
    with pytest.raises(ConfigError, match="mixed"):
        attack("analytic", model, observe(model, images, labels))


def test_analytic_refuses_a_convnet_and_adam() -> None:
    model = _convnet()
    update = observe(model, torch.rand(1, *SHAPE), torch.tensor([1]))
    with pytest.raises(ConfigError, match="Conv2d"):
        attack("analytic", model, update)
    mlp = build_model("mlp", input_shape=SHAPE, num_classes=3)
    adam = observe(
        mlp, torch.rand(1, *SHAPE), torch.tensor([1]), protocol="fedavg", optimizer="adam"
    )
    with pytest.raises(ConfigError, match="adam"):
        attack("analytic", mlp, adam)


def test_bn_fedavg_beats_ig_pseudo_gradient_on_a_bn_train_fedavg_client() -> None:
    """Seed 000's claim, small: BN statistics pin what train-mode BN hides from the update.

    Two faces and two non-faces (labels 0, 1, 0, 1), batch 2, 2 local SGD steps, BN in train
    mode, labels recovered; both attacks run the same iterations. The client's batch order is
    unknown: bn-fedavg's restarts try every spread of the labels over the batches.
    """
    from fedleak.data import load_dataset

    ds = load_dataset("lfw-faces", size=16, split="all")
    faces, other = ds.images[ds.labels == 0], ds.images[ds.labels == 1]
    images = torch.stack([faces[0], other[0], faces[1], other[1]])
    labels = torch.tensor([0, 1, 0, 1])
    torch.manual_seed(0)
    model = build_model("convnet", input_shape=(1, 16, 16), num_classes=2, widths=(16, 32),
                        pool_after=(0,))
    update = observe(model, images, labels, protocol="fedavg", batch_size=2, local_steps=2,
                     lr=0.01, bn_mode="train", shuffle=False)
    bn = attack("bn-fedavg", model, update, iterations=250, seed=0)
    ig = attack("inverting-gradients", model, update, iterations=250, fedavg="pseudo-gradient",
                seed=0)
    p_bn, p_ig = score(bn, images)["psnr"], score(ig, images)["psnr"]
    assert bn.extras["init"] == "random" and len(bn.restart_losses) > 1  # spreads tried
    assert p_bn >= p_ig + 2.0, (p_bn, p_ig, bn.labels.tolist())
