"""Models: MONAI bundles, the registry that serves them, and the training building blocks.

- :mod:`~claraseg.models.bundle`: read a bundle, build its network, load/save weights.
- :mod:`~claraseg.models.registry`: :class:`ModelRegistry` (versions, ``publish``, ``reload``).
- :mod:`~claraseg.models.defaults`: every constant of the default bundles; ``create_bundle``.
- :mod:`~claraseg.models.training`: one simulated-click training sample per kind (``make_sample``),
  ``make_loss``, ``volume_from_images`` - what fine-tune jobs reuse; its building blocks are
  :mod:`~claraseg.models.inputs` (network inputs, shared with the engine), :mod:`~claraseg.models.volumes`,
  :mod:`~claraseg.models.augment` and :mod:`~claraseg.models.click_sampling`.
- :mod:`~claraseg.models.pretrain`: ``claraseg pretrain``, the recipe of the default weights.
- :mod:`~claraseg.models.inference_config` / :mod:`~claraseg.models.transforms`: the interactive bundles'
  ``inference.json`` and the MONAI transforms it runs (``python -m monai.bundle run``).
- :mod:`~claraseg.models.testing`: ``make_tiny_bundle`` for tests.

Torch is imported lazily, so reading descriptors does not need it.
"""

from claraseg.models.bundle import Bundle, read_bundle, save_weights

__all__ = ["Bundle", "read_bundle", "save_weights"]
