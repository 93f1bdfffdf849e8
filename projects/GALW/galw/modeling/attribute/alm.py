"""Attribute localisation modules (ALM, Tang et al., ICCV 2019), one per attribute.

For every attribute an ALM re-weights the channels of a box's feature map with a
squeeze-and-excitation gate (residual: ``x * s + x``), predicts from its pooled gated map a
constrained affine transform (scale in (0, 1), translation in (-1, 1), no rotation or shear)
that selects the attribute's region, samples that region with ``affine_grid`` /
``grid_sample`` (border padding), pools it and scores it with the attribute's own linear
classifier. Pooling is average pooling as Tang et al.'s code (``"max"`` is an option).
The transform is learned without box supervision for the region (weakly
supervised): only the attribute label reaches it, through the bilinear sampler.

The ALMs of one pyramid level are evaluated together. Because the gate ``1 + s`` is a
positive per-channel constant over space, sampling (linear per channel, whatever the
padding) and pooling (average or max) the gated map equals gating the sampled and pooled
raw map; the module uses that identity so
the raw map is sampled once per attribute and no gated copy per attribute is kept.
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttributeLocalization", "constrained_affine", "POOLINGS", "PADDING_MODES"]

POOLINGS = ("avg", "max")
PADDING_MODES = ("border", "zeros")


def constrained_affine(raw: torch.Tensor) -> torch.Tensor:
    """Map unconstrained ``[..., 4]`` outputs (sx, sy, tx, ty) to ``[..., 2, 3]`` affine matrices.

    Scales go through a sigmoid (a region no larger than the box, never flipped) and
    translations through tanh (the region's centre stays inside the box).
    """
    if raw.shape[-1] != 4:
        raise ValueError(f"constrained_affine expects a last dimension of 4 (sx, sy, tx, ty), got {tuple(raw.shape)}")
    scale = torch.sigmoid(raw[..., :2])
    shift = torch.tanh(raw[..., 2:])
    zero = torch.zeros_like(scale[..., :1])
    row_x = torch.cat([scale[..., :1], zero, shift[..., :1]], dim=-1)
    row_y = torch.cat([zero, scale[..., 1:], shift[..., 1:]], dim=-1)
    return torch.stack([row_x, row_y], dim=-2)


class AttributeLocalization(nn.Module):
    """``num_attributes`` ALMs over feature maps with ``channels`` channels.

    ``forward(x [R, C, H, W]) -> (logits [R, A], theta [R, A, 2, 3])``.
    """

    def __init__(
        self, channels: int, num_attributes: int, se_reduction: int = 16, pooling: str = "avg",
        padding_mode: str = "border",
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"MODEL.ATTRIBUTE.POOLING must be one of {POOLINGS}, got {pooling!r}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"MODEL.ATTRIBUTE.PADDING_MODE must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.pooling = pooling
        self.padding_mode = padding_mode
        if channels <= 0 or num_attributes <= 0 or se_reduction <= 0:
            raise ValueError(
                f"AttributeLocalization needs positive channels, num_attributes and se_reduction, "
                f"got {channels}, {num_attributes}, {se_reduction}"
            )
        hidden = max(1, channels // se_reduction)
        a = num_attributes
        self.channels = channels
        self.num_attributes = num_attributes
        # Squeeze-and-excitation gate per attribute: C -> C/r -> C.
        self.se_reduce_weight = nn.Parameter(torch.empty(a, hidden, channels))
        self.se_reduce_bias = nn.Parameter(torch.zeros(a, hidden))
        self.se_expand_weight = nn.Parameter(torch.empty(a, channels, hidden))
        self.se_expand_bias = nn.Parameter(torch.zeros(a, channels))
        # Localisation net per attribute: pooled gated features -> (sx, sy, tx, ty).
        # Zero init: every ALM starts on the central half of the box (scale 0.5, shift 0).
        self.loc_weight = nn.Parameter(torch.zeros(a, 4, channels))
        self.loc_bias = nn.Parameter(torch.zeros(a, 4))
        # Classifier per attribute on the pooled attended region.
        self.cls_weight = nn.Parameter(torch.empty(a, channels))
        self.cls_bias = nn.Parameter(torch.zeros(a))
        for w in (self.se_reduce_weight, self.se_expand_weight):
            nn.init.kaiming_uniform_(w.view(-1, w.shape[-1]), a=5 ** 0.5)
        nn.init.normal_(self.cls_weight, std=0.01)

    def forward(self, x: torch.Tensor):
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"AttributeLocalization expects [R, {self.channels}, H, W] features, got {tuple(x.shape)}")
        squeezed = x.mean(dim=(2, 3))
        hidden = F.relu(torch.einsum("rc,akc->rak", squeezed, self.se_reduce_weight) + self.se_reduce_bias)
        gate = 1.0 + torch.sigmoid(torch.einsum("rak,ack->rac", hidden, self.se_expand_weight) + self.se_expand_bias)

        # pool over space of (x * gate) == gate * pool over space of x, since gate > 0 is constant over space.
        loc_input = gate * self._pool(x).unsqueeze(1)
        raw = torch.einsum("rac,afc->raf", loc_input, self.loc_weight) + self.loc_bias
        theta = constrained_affine(raw)

        pooled = []
        for a in range(self.num_attributes):
            grid = F.affine_grid(theta[:, a], list(x.shape), align_corners=False)
            region = F.grid_sample(x, grid, mode="bilinear", padding_mode=self.padding_mode, align_corners=False)
            pooled.append(self._pool(region))
        attended = gate * torch.stack(pooled, dim=1)
        logits = (attended * self.cls_weight).sum(dim=-1) + self.cls_bias
        return logits, theta

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) if self.pooling == "avg" else x.amax(dim=(2, 3))
