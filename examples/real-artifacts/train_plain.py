"""One federated round written without fedleak: what a hospital team already has on disk.

The server's global model and one client's local training (2 epochs, batch 2, SGD with momentum
0.9, BatchNorm in train mode) on 4 of scikit-learn's bundled 8x8 digits (no download). The data
loader normalizes with mean 0.5, std 0.5, as ``transforms.Normalize((0.5,), (0.5,))`` would.
Writes, into OUT (default ``real-run/``):

- ``global.pt``: the global weights (``torch.save(model.state_dict())``)
- ``client.safetensors``: the weights the client sent back
- ``training.yaml``: the client's settings, as the server configured them
- ``truth.npz``: the client's raw images in [0, 1] and labels (to score the audit only)

Then audit it with one command (see README.md in this folder).
"""

import copy
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).parent))
from model import SmallNet  # noqa: E402

out = Path(sys.argv[1] if len(sys.argv) > 1 else "real-run")
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)

digits = load_digits()
pick = np.random.default_rng(0).choice(len(digits.target), 4, replace=False)
pixels = torch.tensor(digits.images[pick] / 16.0, dtype=torch.float32).unsqueeze(1)  # (4,1,8,8)
labels = torch.tensor(digits.target[pick])

global_model = SmallNet()
torch.save(global_model.state_dict(), out / "global.pt")

client = copy.deepcopy(global_model).train()
opt = torch.optim.SGD(client.parameters(), lr=0.05, momentum=0.9)
x = (pixels - 0.5) / 0.5  # the data loader's Normalize
for epoch in range(2):
    for s in range(0, len(x), 2):  # no shuffling
        opt.zero_grad()
        F.cross_entropy(client(x[s:s + 2]), labels[s:s + 2]).backward()
        opt.step()
save_file({k: v.contiguous() for k, v in client.state_dict().items()},
          str(out / "client.safetensors"))
(out / "training.yaml").write_text(
    "lr: 0.05\nepochs: 2\nbatch_size: 2\noptimizer: sgd\nmomentum: 0.9\nweight_decay: 0.0\n"
    "bn_mode: train\nnum_samples: 4\n"
)
np.savez(out / "truth.npz", images=pixels.numpy(), labels=labels.numpy())
print(f"wrote {out}/global.pt, client.safetensors, training.yaml, truth.npz")
