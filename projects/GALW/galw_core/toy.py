"""A synthetic multi-task model with planted gradient-magnitude trends, for GALW's tests,
benchmark and docs: a shared conv trunk named like a detectron2 ResNet (backbone.res2..res4,
so GALW's default SHARED_PARAM_PREFIXES apply) and one linear-readout head per task.

Task i's loss is ``2 ** (trend_i * epoch) * gain * (mean(head_i(trunk(x))) - target)^2 / 2``, averaged
over the images of the batch (so a batch split over ranks averages back to it): the outputs start far
from the target, so the residual (hence the gradient) barely changes over
a short training with a small learning rate, while the quadratic keeps the training stable: its gradient on
the shared trunk grows (trend +1), stays flat (0) or shrinks (-1) from epoch to epoch, so the
tasks with the same trend form the clusters GALW should find.
"""
from typing import Dict, Iterator, Sequence

import torch
from torch import nn

__all__ = ["ToyMultiTask", "toy_batches", "PLANTED_TRENDS"]

#: Six tasks in three planted clusters: growing, flat and shrinking gradient magnitudes.
PLANTED_TRENDS = (1, 1, 0, 0, -1, -1)


class ToyMultiTask(nn.Module):
    def __init__(self, trends: Sequence[int] = PLANTED_TRENDS, epoch_iters: int = 5, channels: int = 16,
                 gain: float = 1e-3, target: float = 100.0, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.trends = [int(t) for t in trends]
        self.epoch_iters = int(epoch_iters)
        self.gain = float(gain)
        self.target = float(target)
        c = channels
        self.backbone = nn.ModuleDict(
            {
                "res2": nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU()),
                "res3": nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1), nn.ReLU()),
                "res4": nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1), nn.ReLU()),
            }
        )
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1) for _ in self.trends)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / max(1, p[0].numel())) ** 0.5)
        # Training iterations seen (a buffer, so it is checkpointed with the model).
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    @property
    def task_names(self):
        return [f"loss_t{i}" for i in range(len(self.trends))]

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = images
        for stage in ("res2", "res3", "res4"):
            x = self.backbone[stage](x)
        epoch = int(self.iteration) // self.epoch_iters
        if self.training:
            self.iteration += 1
        return {
            name: (2.0 ** (trend * epoch)) * self.gain * 0.5 * ((head(x).mean(dim=(1, 2, 3)) - self.target) ** 2).mean()
            for name, trend, head in zip(self.task_names, self.trends, self.heads)
        }


def toy_batches(batch_size: int = 4, size: int = 32, seed: int = 0) -> Iterator[torch.Tensor]:
    """Endless random image batches, reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield torch.rand(batch_size, 3, size, size, generator=gen)
