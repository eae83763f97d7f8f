"""Contract tests for fedleak.models: shapes, double backprop, torch.func, options."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from fedleak.errors import ConfigError, DataError, UnknownNameError
from fedleak.models import (
    Normalize,
    available_models,
    bn_layers,
    build_model,
    model_options,
)
from fedleak.models.resnet import group_count

MODELS = ["convnet", "lenet", "mlp", "resnet18", "resnet20"]
SHAPES = [(1, 32, 32), (3, 32, 32), (1, 16, 16), (1, 28, 28), (1, 8, 8)]
# Narrow ResNet-18 keeps the double-backward tests fast; the architecture is the same.
FAST = {"resnet18": {"width": 8}}


def _model(name: str, shape: tuple[int, int, int], classes: int = 10, **opts) -> nn.Module:
    torch.manual_seed(0)
    return build_model(
        name, input_shape=shape, num_classes=classes, **{**FAST.get(name, {}), **opts}
    )


def _images(shape: tuple[int, int, int], batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, *shape, generator=torch.Generator().manual_seed(1))


def test_available_models_lists_all() -> None:
    assert set(MODELS) <= set(available_models())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", MODELS)
def test_forward_shape_and_first_module(name: str, shape: tuple[int, int, int]) -> None:
    model = _model(name, shape, classes=7)
    assert isinstance(next(iter(model.children())), Normalize)
    assert model.input_shape == shape and model.num_classes == 7
    for train in (True, False):
        model.train(train)
        out = model(_images(shape))
        assert out.shape == (2, 7)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", MODELS)
def test_double_backward_reaches_input(name: str, shape: tuple[int, int, int]) -> None:
    model = _model(name, shape).eval()
    x = _images(shape).requires_grad_(True)
    y = torch.tensor([1, 3])
    params = [p for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    sum(g.pow(2).sum() for g in grads).backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 8, 8)], ids=["3x32x32", "1x8x8"])
@pytest.mark.parametrize("name", MODELS)
def test_functional_call_matches_module(name: str, shape: tuple[int, int, int]) -> None:
    model = _model(name, shape).eval()
    x = _images(shape)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    torch.testing.assert_close(functional_call(model, params, (x,)), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_vmap_over_restarts(name: str) -> None:
    """Several attack restarts (own images, shared params) batched with vmap in eval mode."""
    shape = (1, 16, 16)
    model = _model(name, shape).eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    xs = torch.rand(3, 2, *shape)

    def logits(x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, params, (x,))

    out = vmap(logits)(xs)
    assert out.shape == (3, 2, 10)
    torch.testing.assert_close(out[1], model(xs[1]))


def test_vmap_over_params_convnet() -> None:
    """Per-restart parameters (e.g. several victims) also batch under vmap."""
    shape = (1, 16, 16)
    model = _model("convnet", shape).eval()
    params = {k: torch.stack([v.detach(), v.detach() * 0.5]) for k, v in model.named_parameters()}
    x = _images(shape)
    out = vmap(lambda p: functional_call(model, p, (x,)))(params)
    single = {k: v[1] for k, v in params.items()}
    torch.testing.assert_close(out[1], functional_call(model, single, (x,)))


def test_lenet_matches_dlg() -> None:
    model = _model("lenet", (3, 32, 32), classes=100)
    linear = model[-1]
    assert isinstance(linear, nn.Linear) and linear.in_features == 768
    assert [type(m) for m in model][1:8:2] == [nn.Conv2d, nn.Conv2d, nn.Conv2d, nn.Flatten]
    for p in model.parameters():
        assert p.min() >= -0.5 and p.max() <= 0.5
    # DLG init is far wider than PyTorch's for the 768-wide Linear (bound 1/sqrt(768) ~ 0.036).
    assert linear.weight.abs().max() > 0.4
    default = _model("lenet", (3, 32, 32), classes=100, init="default")
    assert default[-1].weight.abs().max() < 0.05


def test_convnet_defaults() -> None:
    model = _model("convnet", (1, 32, 32), classes=2)
    n_params = sum(p.numel() for p in model.parameters())
    assert 200_000 < n_params < 300_000
    assert len(bn_layers(model)) == 4
    assert sum(isinstance(m, nn.MaxPool2d) for m in model) == 2
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())


def test_convnet_options() -> None:
    model = _model("convnet", (3, 20, 24), widths=(8, 16), pool_after=(0,), head="gap", width=2)
    assert model[-1].in_features == 32
    assert model(_images((3, 20, 24))).shape == (2, 10)
    plain = _model("convnet", (1, 28, 28), batch_norm=False, pool_after=())
    assert bn_layers(plain) == []
    assert all(m.bias is not None for m in plain.modules() if isinstance(m, nn.Conv2d))


def test_resnet_group_norm_has_no_batch_norm() -> None:
    for name in ("resnet18", "resnet20"):
        model = _model(name, (3, 16, 16), norm="group")
        assert bn_layers(model) == []
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        groups = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
        assert groups and all(m.num_channels % m.num_groups == 0 for m in groups)
        # GroupNorm has no running stats, so even train mode batches under vmap.
        params = {k: v.detach() for k, v in model.named_parameters()}
        out = vmap(lambda x, m=model, p=params: functional_call(m, p, (x,)))(
            torch.rand(2, 2, 3, 16, 16)
        )
        assert out.shape == (2, 2, 10)


def test_group_count_divides() -> None:
    for ch in (1, 3, 6, 10, 16, 24, 32, 64, 100, 128, 512):
        g = group_count(ch)
        assert ch % g == 0 and 1 <= g <= 32
    assert [group_count(c) for c in (16, 64, 512)] == [4, 16, 32]


def test_mlp_first_layer_is_biased_linear() -> None:
    model = _model("mlp", (1, 28, 28), hidden=(32, 16), activation="tanh")
    first = model[2]
    assert isinstance(model[1], nn.Flatten)
    assert isinstance(first, nn.Linear) and first.bias is not None and first.in_features == 784
    assert sum(isinstance(m, nn.Tanh) for m in model) == 2
    logreg = _model("mlp", (1, 8, 8), hidden=())
    assert [type(m) for m in logreg] == [Normalize, nn.Flatten, nn.Linear]


def test_bn_layers_forward_order() -> None:
    names = [n for n, _ in bn_layers(_model("resnet18", (3, 16, 16)))]
    assert names[:3] == ["norm1", "layers.0.0.norm1", "layers.0.0.norm2"]
    assert "layers.1.0.shortcut.1" in names


@pytest.mark.parametrize("name", MODELS)
def test_normalize_is_not_state(name: str) -> None:
    model = _model(name, (3, 16, 16))
    keys = list(model.state_dict())
    assert not any(k.endswith(("mean", "std")) and "running" not in k for k in keys)
    norm = next(iter(model.children()))
    assert norm.mean in list(model.buffers())
    assert all(p is not norm.mean and p is not norm.std for p in model.parameters())
    model.double()
    assert norm.mean.dtype == torch.float64


def test_normalize_values_and_options() -> None:
    norm = Normalize(3, mean=(0.1, 0.2, 0.3), std=0.5)
    x = torch.rand(2, 3, 4, 4)
    expected = (x - torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)) / 0.5
    torch.testing.assert_close(norm(x), expected)
    torch.testing.assert_close(Normalize(1)(torch.ones(1, 1, 2, 2)), torch.ones(1, 1, 2, 2))
    model = _model("lenet", (3, 8, 8), mean=(0.4, 0.5, 0.6), std=(0.2, 0.2, 0.2))
    torch.testing.assert_close(model[0].mean.flatten(), torch.tensor([0.4, 0.5, 0.6]))
    with pytest.raises(ConfigError, match="`mean` of Normalize"):
        Normalize(3, mean=(0.1, 0.2))
    with pytest.raises(ConfigError, match="`std` of Normalize"):
        Normalize(1, std=0.0)
    with pytest.raises(DataError, match="3 channels"):
        norm(torch.rand(2, 1, 4, 4))


def test_unknown_model_lists_names() -> None:
    with pytest.raises(UnknownNameError, match="available: convnet, .*lenet, .*mlp") as info:
        build_model("lenett", input_shape=(1, 32, 32), num_classes=2)
    assert "Did you mean 'lenet'?" in str(info.value)


def test_unknown_option_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="init, mean, std; got 'widths'"):
        build_model("lenet", input_shape=(1, 32, 32), num_classes=2, widths=(8,))
    assert model_options("convnet") == [
        "batch_norm",
        "head",
        "mean",
        "pool_after",
        "std",
        "width",
        "widths",
    ]
    with pytest.raises(ConfigError, match="norm, std, width; got 'hidden'"):
        build_model("resnet20", input_shape=(1, 32, 32), num_classes=2, hidden=(3,))


def test_latent_net_is_registered_without_the_defenses() -> None:
    """``latent-net`` is a model of ``fedleak.models``: no import of ``fedleak.defenses`` needed."""
    code = textwrap.dedent(
        """
        import sys

        import torch
        from fedleak.models import available_models, build_model
        assert "latent-net" in available_models()
        model = build_model("latent-net", input_shape=(1, 8, 8), num_classes=3, width=2, pool=2)
        assert model(torch.rand(2, 1, 8, 8)).shape == (2, 3)
        assert not any(m.startswith("fedleak.defenses") for m in sys.modules), "defenses loaded"
        print(type(model).__module__)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "fedleak.models.latent"


@pytest.mark.parametrize(
    ("name", "opts", "param"),
    [
        ("lenet", {"init": "xavier"}, "init"),
        ("convnet", {"head": "avg"}, "head"),
        ("convnet", {"widths": ()}, "widths"),
        ("convnet", {"pool_after": (4,)}, "pool_after"),
        ("convnet", {"width": 0}, "width"),
        ("convnet", {"batch_norm": 1}, "batch_norm"),
        ("resnet18", {"norm": "layer"}, "norm"),
        ("resnet20", {"width": 1.5}, "width"),
        ("mlp", {"activation": "gelu"}, "activation"),
        ("mlp", {"hidden": (0,)}, "hidden"),
    ],
)
def test_bad_option_values(name: str, opts: dict, param: str) -> None:
    with pytest.raises(ConfigError, match=f"`{param}` of"):
        build_model(name, input_shape=(1, 32, 32), num_classes=2, **opts)


def test_bad_shapes() -> None:
    with pytest.raises(ConfigError, match="`input_shape`"):
        build_model("mlp", input_shape=(32, 32), num_classes=2)
    with pytest.raises(ConfigError, match="`num_classes`"):
        build_model("mlp", input_shape=(1, 8, 8), num_classes=0)
    with pytest.raises(ConfigError, match="large enough"):
        build_model("convnet", input_shape=(1, 3, 3), num_classes=2)


def test_default_parameter_counts() -> None:
    """Pins the documented sizes so an architecture change is a deliberate one."""
    expected = {"convnet": 323_114, "lenet": 15_826, "mlp": 789_258, "resnet18": 11_173_962}
    expected["resnet20"] = 269_722
    for name, count in expected.items():
        model = build_model(name, input_shape=(3, 32, 32), num_classes=10)
        assert sum(p.numel() for p in model.parameters()) == count, name
    convnet = build_model("convnet", input_shape=(1, 32, 32), num_classes=2)
    assert sum(p.numel() for p in convnet.parameters()) == 256_994


def test_full_width_resnet18_double_backward() -> None:
    model = build_model("resnet18", input_shape=(3, 32, 32), num_classes=10).eval()
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([4]))
    grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    sum(g.pow(2).sum() for g in grads).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
