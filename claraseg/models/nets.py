"""Networks of the interactive bundles beyond MONAI's own.

:class:`ContextUNet` is MONAI's ``UNet`` with a context branch that sees the whole ROI. A click's
influence on a plain 3-level UNet reaches about 15 ROI voxels (its receptive field at the bottleneck):
from one click inside an organ larger than that, the result is a ball of that radius whatever the image
shows. The branch pools the input by ``context_pool``, runs dilated convolutions over it (a receptive
field of the whole ROI) and gives the UNet ``context_channels`` more input channels, upsampled to the
ROI's grid. Built from trained UNet weights (:func:`unet_to_context_state`), the first layer's weights
for those channels are zero, so the network starts out computing what the UNet did.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import UNet
from torch import nn
from torch.nn import functional as F


class ContextUNet(UNet):
    """``UNet(spatial_dims, in_channels + context_channels, ...)`` fed with the input and the context
    branch's features (module ``context``; the UNet's own parameters keep MONAI's names)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, channels: Sequence[int],
                 strides: Sequence[int], num_res_units: int = 0, context_channels: int = 4,
                 context_features: int = 24, context_pool: int = 4,
                 context_dilations: Sequence[int] = (1, 2, 4, 8), **kwargs):
        if spatial_dims not in (2, 3):
            raise ValueError("ContextUNet: spatial_dims must be 2 or 3")
        super().__init__(spatial_dims, in_channels + context_channels, out_channels, channels, strides,
                         num_res_units=num_res_units, **kwargs)
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        norm = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
        layers: list[nn.Module] = []
        c = in_channels
        for d in context_dilations:
            layers += [conv(c, context_features, 3, padding=int(d), dilation=int(d)), norm(context_features, affine=True),
                       nn.LeakyReLU(0.1)]
            c = context_features
        layers.append(conv(c, context_channels, 1))
        self.context = nn.Sequential(*layers)
        self.context_pool = int(context_pool)
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.avg_pool3d if self.spatial_dims == 3 else F.avg_pool2d
        ctx = self.context(pool(x, self.context_pool, ceil_mode=True))
        mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
        ctx = F.interpolate(ctx, size=x.shape[2:], mode=mode, align_corners=False)
        return super().forward(torch.cat([x, ctx], dim=1))


def unet_to_context_state(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Trained UNet weights for a :class:`ContextUNet` of the same UNet shape: the context branch keeps
    ``target``'s (fresh) weights; the first layer's weights for the context channels are zero (the
    input widening of :func:`claraseg.models.pretrain.widen_input_channels`)."""
    from claraseg.models.pretrain import widen_input_channels

    out = widen_input_channels(state, target)
    for k, v in target.items():
        if k.startswith("context.") and k not in out:
            out[k] = v.clone()
    return out
