"""Each preflight warning and error, triggered by a deliberately wrong artifact.

A correct artifact passes clean first, so every finding below is caused by its one mistake.
"""

import copy

import pytest
import torch
from torch.nn import functional as F
from user_models.plain_loop import SPEC, pixels, train_plainly, user_model

from fedleak.errors import UpdateError
from fedleak.fl import ClientUpdate, TrainingConfig
from fedleak.fl.preflight import preflight
from fedleak.models import Normalize, build_model
from fedleak.models.adapter import load_model_def

SETTINGS = {"lr": 0.1, "epochs": 2, "batch_size": 2, "optimizer": "sgd", "momentum": 0.0,
            "weight_decay": 0.0, "bn_mode": "train"}


def audited(model=None, *, settings=None, fedsgd=False, bn_train=True, momentum=0.0, **kw):
    model = model or user_model()
    x, y = pixels()
    g, c, _ = train_plainly(model, x, y, fedsgd=fedsgd, bn_train=bn_train, momentum=momentum)
    s = dict(SETTINGS if settings is None else settings)
    if fedsgd:
        s = {"lr": 0.1, "bn_mode": s.get("bn_mode", "train")}
    u = ClientUpdate.from_states(g, c, model=model, training=s, num_samples=4,
                                 kind="gradient" if fedsgd else "delta")
    kw.setdefault("settings", s)
    kw.setdefault("image_shape", (1, 8, 8))
    kw.setdefault("transform", Normalize(1, 0.5, 0.5))
    return preflight(model, u, input_transform="mean 0.5 std 0.5", **kw), model, u


def test_a_correct_artifact_passes_clean():
    for fedsgd in (False, True):
        report, _, _ = audited(fedsgd=fedsgd)
        assert not report.errors and not report.warnings, report.findings
        report.raise_errors()


def test_eval_mode_buffers_claimed_as_train_and_the_reverse():
    report, _, _ = audited(bn_train=False)  # stated: train
    assert "bn-mode" in report.checks("error")
    with pytest.raises(UpdateError, match="bn_mode=eval"):
        report.raise_errors()
    report, _, _ = audited(settings={**SETTINGS, "bn_mode": "eval"})  # trained: train
    assert "bn-mode" in report.checks("error")
    assert not audited(bn_train=False, settings={**SETTINGS, "bn_mode": "eval"})[0].errors


def test_missing_buffers_are_a_warning():
    _, model, u = audited()
    report = preflight(model, u.replace(buffers={}), input_transform="x")
    assert report.checks("warning") == {"bn-buffers"} and not report.errors


def test_wrong_lr_or_steps():
    report, _, _ = audited(settings={**SETTINGS, "lr": 0.005})  # true lr 0.1
    assert "size" in report.checks("warning") and "replay" not in report.checks()
    report, _, _ = audited(settings={**SETTINGS, "lr": 0.0005})  # beyond the hard bound
    assert "size" in report.checks("error") and "too small" in report.errors[0].message
    report, _, _ = audited(settings={**SETTINGS, "lr": 2.0})  # too large
    assert "size" in report.checks("warning")
    # momentum 0.9 used but not stated: the audit says what it assumed
    unstated = {k: v for k, v in SETTINGS.items() if k != "momentum"}
    report, model, u = audited(momentum=0.9, settings=unstated)
    assert "assumed" in report.checks("warning") and "momentum=0.0" in str(report)
    # an update 6 times what the stated training gives (no BatchNorm counter to tell)
    _, model, u = audited()
    many = u.replace(tensors={k: 6 * v for k, v in u.tensors.items()})
    report = preflight(model, many.replace(buffers={}), input_transform="x",
                       image_shape=(1, 8, 8), transform=Normalize(1, 0.5, 0.5))
    assert "size" in report.checks("warning"), report.findings
    # momentum 0.9 used but not stated: stated 1 epoch of 4, counted forwards disagree
    report, _, _ = audited(settings={**SETTINGS, "epochs": 1}, momentum=0.9)
    assert "bn-steps" in report.checks("error")


def test_adam_update_with_a_too_small_lr():
    model = user_model()
    x, y = pixels()
    net = copy.deepcopy(model).train()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for s in (0, 2, 0, 2):
        opt.zero_grad()
        F.cross_entropy(net((x[s:s + 2] - 0.5) / 0.5), y[s:s + 2]).backward()
        opt.step()
    ok = ClientUpdate.from_modules(model, net, training={**SETTINGS, "optimizer": "adam",
                                                         "lr": 0.05}, num_samples=4)
    assert not preflight(model, ok, input_transform="x").errors
    bad = ClientUpdate.from_modules(model, net, training={**SETTINGS, "optimizer": "adam",
                                                          "lr": 0.001}, num_samples=4)
    assert "size" in preflight(model, bad, input_transform="x").checks("error")


def test_a_gradient_passed_as_a_delta_and_weights_passed_as_an_update():
    _, model, grad = audited(fedsgd=True)
    as_delta = ClientUpdate(kind="delta", tensors=grad.tensors, buffers=grad.buffers,
                            num_samples=4, training=TrainingConfig(
                                protocol="fedavg", lr=0.01, local_steps=1, batch_size=4))
    report = preflight(model, as_delta, input_transform="x")
    assert "size" in report.checks("error") and "gradient passed as a delta" in str(report)
    assert "too small" in str(report)
    weights = {k: v.detach().clone() for k, v in model.named_parameters()}
    report = preflight(model, as_delta.replace(tensors=weights), input_transform="x")
    assert "kind" in report.checks("error") and "absolute weights" in str(report)
    model.head.bias.data.fill_(1.0)  # weights as a gradient: bias L1 3, beyond the bound 2
    weights_as_grad = grad.replace(tensors={k: v.detach().clone()
                                            for k, v in model.named_parameters()})
    assert "kind" in preflight(model, weights_as_grad, input_transform="x").checks("error")
    zero = grad.replace(tensors={k: torch.zeros_like(v) for k, v in grad.tensors.items()})
    assert "empty" in preflight(model, zero, input_transform="x").checks("error")


def test_a_model_that_normalizes_when_the_data_is_already_normalized():
    torch.manual_seed(0)
    model = build_model("convnet", input_shape=(1, 8, 8), num_classes=3, widths=(4,),
                        pool_after=(0,), batch_norm=False)
    x, y = pixels()
    net = copy.deepcopy(model)
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
    u = ClientUpdate(kind="gradient",
                     tensors=dict(zip([k for k, _ in net.named_parameters()], grads,
                                      strict=True)),
                     num_samples=4, training=None)
    twice = preflight(model, u, input_transform="mean 0.5 std 0.5")
    assert "normalization" in twice.checks("warning") and "twice" in str(twice)
    assert "normalization" in preflight(model, u).checks("info")  # inside only: fine
    plain = user_model()  # no normalization inside, none stated
    _, _, u2 = audited()
    assert "normalization" in preflight(plain, u2).checks("warning")
    report = preflight(plain, u2, input_transform="x", truth_range=(-1.0, 1.0))
    assert "truth-range" in report.checks("error")


def test_coverage_shapes_and_names():
    _, model, u = audited()
    partial = u.replace(tensors={k: v for k, v in u.tensors.items() if k != "conv.bias"})
    assert "coverage" in preflight(model, partial, input_transform="x").checks("warning")
    stray = u.replace(tensors={**u.tensors, "module.extra": torch.zeros(2)})
    assert "coverage" in preflight(model, stray, input_transform="x").checks("error")
    bad = u.replace(tensors={**u.tensors, "head.bias": torch.zeros(5)})
    assert "shapes" in preflight(model, bad, input_transform="x").checks("error")
    keys = [*model.state_dict(), "aux_head.weight"]
    assert "coverage" in preflight(model, u, client_keys=keys,
                                   input_transform="x").checks("warning")


def test_dropout_missing_count_and_assumptions_are_warnings():
    torch.manual_seed(0)
    drop = load_model_def(SPEC, {"dropout": 0.3})
    x, y = pixels()
    report = preflight(drop, audited()[2], input_transform="x")
    assert "stochastic" in report.checks("warning")
    _, model, u = audited()
    report = preflight(model, u.replace(num_samples=None), input_transform="x",
                       assumed=["momentum=0.0"])
    assert {"num-samples", "assumed"} <= report.checks("warning")
    assert report.to_dict()["warnings"] == 2
