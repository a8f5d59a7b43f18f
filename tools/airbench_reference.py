"""airbench94's own code on this CPU and this dataset: the peer that `models/fast_cifar10.yaml` is
measured against (issue 13).

Runs ``airbench.lib_airbench94.train94`` from the ``airbench`` package (Keller Jordan's reference,
unchanged hyperparameters, network and training loop: 9.9 epochs, Lookahead, whitening, alternating
flip, per-epoch test accuracy and the final 6-view TTA) on ``../shared/datasets/cifar10.npz``.
Only the device plumbing is replaced, so that the GPU script runs on a CPU:

- the net keeps fp32 weights and runs its forward pass under bf16 autocast (the reference holds
  fp16 weights on a GPU; batch norm stays fp32 in both). Autocast around the whole loop
  (optimizer and Lookahead included) does not train at all on the CPU: the loss stays at chance;
- CUDA timing events become wall-clock timers, ``torch.load`` maps to the CPU, and
  ``torchvision.transforms.Normalize`` is a stand-in (a CPU PyTorch wheel has no matching
  torchvision here);
- the patch covariance of the whitening init is computed in fp32 (as on the GPU).

It needs PyTorch and the airbench package, which edgecnn does not depend on; use a venv of its own:

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy
    /tmp/torchvenv/bin/pip download --no-deps airbench==0.1.8 -d /tmp/ab
    /tmp/torchvenv/bin/pip install --no-deps /tmp/ab/airbench-0.1.8.tar.gz
    /tmp/torchvenv/bin/python tools/airbench_reference.py ../shared/datasets/cifar10.npz --work /tmp/abref
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types


def _cpu_plumbing(torch) -> None:
    from torch import nn

    class Normalize:  # torchvision.transforms.Normalize on NCHW tensors
        def __init__(self, mean, std):
            self.mean, self.std = torch.as_tensor(mean).view(-1, 1, 1), torch.as_tensor(std).view(-1, 1, 1)

        def __call__(self, x):
            return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    tv = types.ModuleType("torchvision")
    tv.transforms = types.SimpleNamespace(Normalize=Normalize)
    tv.datasets = None
    sys.modules.setdefault("torchvision", tv)
    sys.modules.setdefault("torchvision.transforms", tv.transforms)

    class Event:  # torch.cuda.Event(enable_timing=True) as a wall clock
        def __init__(self, **_):
            self.t = 0.0

        def record(self):
            self.t = time.perf_counter()

        def elapsed_time(self, other):
            return 1e3 * (other.t - self.t)

    torch.cuda.Event = Event
    torch.cuda.synchronize = lambda *a, **k: None
    nn.Module.cuda = lambda self, *a, **k: self
    nn.Module.half = lambda self, *a, **k: self  # fp32 weights; the forward pass runs under bf16 autocast
    torch.Tensor.half = lambda self, *a, **k: self.float()
    load = torch.load
    torch.load = lambda f, map_location=None, **k: load(f, map_location="cpu", **k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("npz", help="a keras-layout CIFAR-10 .npz (x_train, y_train, x_test, y_test)")
    ap.add_argument("--work", default="/tmp/airbench_reference", help="folder for the converted dataset")
    ap.add_argument("--epochs", type=float, default=9.9, help="airbench94's 9.9 unless given")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast (about 2x slower on a CPU)")
    args = ap.parse_args()

    import importlib.util

    import numpy as np

    missing = [name for name in ("torch", "airbench") if importlib.util.find_spec(name) is None]
    if missing:  # airbench itself imports torchvision, which _cpu_plumbing stands in for
        sys.exit(f"airbench_reference.py needs PyTorch and the airbench package ({', '.join(missing)} missing): "
                 "install them in a venv of their own, as this script's docstring shows.")
    import torch
    if not os.path.isfile(args.npz):
        sys.exit(f"No such dataset file: {args.npz} (a keras-layout CIFAR-10 .npz).")

    torch.set_num_threads(os.cpu_count() or 1)
    _cpu_plumbing(torch)
    data_dir = os.path.join(args.work, "cifar10")
    os.makedirs(data_dir, exist_ok=True)
    with np.load(args.npz) as d:
        for split in ("train", "test"):
            torch.save({"images": torch.from_numpy(d[f"x_{split}"]),
                        "labels": torch.from_numpy(d[f"y_{split}"].reshape(-1).astype(np.int64)),
                        "classes": [str(i) for i in range(10)]}, os.path.join(data_dir, f"{split}.pt"))
    os.chdir(args.work)  # the reference reads ./cifar10/{train,test}.pt

    import airbench.utils as utils

    defaults = utils.CifarLoader.__init__.__defaults__
    utils.CifarLoader.__init__.__defaults__ = defaults[:-1] + ("cpu",)  # its last parameter: gpu=0
    whiten = utils.init_whitening_conv

    def whiten_fp32(*a, **k):
        with torch.autocast("cpu", enabled=False):
            return whiten(*a, **k)

    utils.init_whitening_conv = whiten_fp32
    from airbench.lib_airbench94 import make_net94, train94

    def make_net_bf16():
        net = make_net94()
        forward = net.forward

        def forward_bf16(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return forward(x).float()

        net.forward = forward_bf16
        return net

    t0 = time.time()
    train94(epochs=args.epochs, make_net=make_net94 if args.fp32 else make_net_bf16)
    print(f"wall {time.time() - t0:.1f} s ({'fp32' if args.fp32 else 'bf16 forward'}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__})", flush=True)


if __name__ == "__main__":
    main()
