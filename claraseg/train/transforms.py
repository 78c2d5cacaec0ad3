"""Dictionary transforms the default training configs use, keyed to the bundle's ``claraseg`` metadata."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.transforms import MapTransform


class NormaliseIntensityd(MapTransform):
    """Normalise image intensities exactly as the engine does at inference (``claraseg.intensity`` spec).

    Args:
        keys: image keys.
        spec: the bundle's ``claraseg.intensity`` entry (``window`` / ``percentile`` per modality).
        modality: ``CT`` or ``MR``; default: guessed per image as the engine does.
    """

    def __init__(self, keys: Sequence[Hashable] | Hashable, spec: Mapping[str, Any], modality: str | None = None) -> None:
        super().__init__(keys)
        self.spec = dict(spec)
        self.modality = modality

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import torch

        from claraseg.io import Image
        from claraseg.models.preprocess import guess_modality, normalise_intensity

        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            array = np.asarray(value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value)
            modality = self.modality or guess_modality(Image(array.reshape((-1,) + array.shape[-2:])))
            out = normalise_intensity(array, modality, self.spec)
            if isinstance(value, torch.Tensor):
                new = torch.as_tensor(out)
                d[key] = value.new_tensor(new) if not hasattr(value, "meta") else type(value)(new, meta=value.meta)
            else:
                d[key] = out
        return d
