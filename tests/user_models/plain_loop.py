"""Helpers of the artifact tests: the user's model by file path, data, a plain training loop."""

import copy
from pathlib import Path

import torch
from torch.nn import functional as F

from fedleak.models.adapter import load_model_def

USER_FILE = Path(__file__).parent / "hospital_net.py"
SPEC = f"{USER_FILE}:HospitalNet"


def user_model(seed=0, **kw):
    torch.manual_seed(seed)
    return load_model_def(SPEC, kw)


def pixels(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, 8, 8), generator=g), torch.randint(0, 3, (n,), generator=g)


def train_plainly(model, x, y, *, fedsgd, optimizer="sgd", lr=0.1, epochs=2, batch_size=2,
                  momentum=0.0, bn_train=True):
    """A training script written without fedleak: normalize, train, return (global, client)."""
    net = copy.deepcopy(model)
    net.train()
    if not bn_train:
        net.bn.eval()
    x = (x - 0.5) / 0.5  # the data pipeline normalizes, the model does not
    if fedsgd:
        loss = F.cross_entropy(net(x), y)
        grads = torch.autograd.grad(loss, list(net.parameters()))
        sent = dict(zip([k for k, _ in net.named_parameters()], grads, strict=True))
        sent |= {k: v for k, v in net.named_buffers() if k.startswith("bn.")}  # BN buffers
        return model.state_dict(), sent, net
    opt = (torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum) if optimizer == "sgd"
           else torch.optim.Adam(net.parameters(), lr=lr))
    for _ in range(epochs):
        for s in range(0, len(x), batch_size):  # no shuffle
            opt.zero_grad()
            F.cross_entropy(net(x[s:s + batch_size]), y[s:s + batch_size]).backward()
            opt.step()
    return model.state_dict(), net.state_dict(), net
