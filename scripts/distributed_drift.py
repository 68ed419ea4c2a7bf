"""Weight drift between one process and W data-parallel processes over the same global batches (docs/distributed.md).

    OMP_NUM_THREADS=1 python scripts/distributed_drift.py
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 scripts/distributed_drift.py
    python scripts/distributed_drift.py --compare

LeNet-300 on Fashion-MNIST, SGD lr 0.05, momentum 0.9, weight decay 5e-4, global batch 128; weights are saved after
1, 10, 50, 200 and 421 steps to drift-w<W>.pt; --compare prints max |Δw| between the 1- and 2-process files.
"""

from __future__ import annotations

import sys

import torch

from edgeprune import distributed
from edgeprune.data import Batches, load_dataset
from edgeprune.models import create_model

STEPS = (1, 10, 50, 200, 421)


def run() -> None:
    torch.set_num_threads(1)
    with distributed.session("cpu"):
        data = load_dataset("fashion-mnist")
        torch.manual_seed(0)
        model = create_model("lenet300")
        stepper = distributed.wrap_ddp(model) if distributed.is_active() else model
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        batches = Batches(data.train, distributed.per_rank_batch(128), shuffle=True, rank=distributed.rank(),
                          world_size=distributed.world_size())
        saved = {}
        for i, (x, y) in enumerate(batches):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(stepper(x), y).backward()
            opt.step()
            if i + 1 in STEPS:
                saved[i + 1] = {k: v.clone() for k, v in model.state_dict().items()}
            if i + 1 == STEPS[-1]:
                break
        if distributed.is_main():
            torch.save(saved, f"drift-w{distributed.world_size()}.pt")


def compare() -> None:
    a, b = torch.load("drift-w1.pt"), torch.load("drift-w2.pt")
    for step in a:
        print(step, max(float((a[step][k] - b[step][k]).abs().max()) for k in a[step]))


if __name__ == "__main__":
    compare() if "--compare" in sys.argv else run()
