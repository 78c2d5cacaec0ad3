"""Inference runtimes and export for deployment.

- :mod:`claraseg.runtimes.export`: a bundle's network as ONNX or TorchScript (``claraseg export``), in a
  MONAI-style bundle copy and a Triton Inference Server model repository;
- :mod:`claraseg.runtimes.nets`: runtime objects the engine calls in place of the torch module (ONNX
  Runtime, OpenVINO, torch under CUDA autocast), chosen per bundle by its ``claraseg.runtime`` setting
  when the registry loads the network (:func:`claraseg.runtimes.nets.runtime_net`);
- :mod:`claraseg.runtimes.bench`: the network forward under every runtime and torch variant, one run
  (``claraseg bench-runtimes``).
"""
