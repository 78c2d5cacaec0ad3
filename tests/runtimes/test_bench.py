"""``claraseg bench-runtimes``' measurement of one network (the full run, with torch.compile and the click
check, is a documented command whose results are in results/bench_runtimes_*.json)."""

from __future__ import annotations

from claraseg.models.registry import ModelRegistry
from claraseg.runtimes import nets
from claraseg.runtimes.bench import bench_network, format_report


def test_bench_network_times_and_checks_every_variant(tiny_versions):
    bundle = ModelRegistry(tiny_versions).get("deepgrow2d")
    out = bench_network(bundle, threads=1, repeats=2, batch=2,
                        only={"torch_onednn", "channels_last", "torch_int8_dynamic", "onnxruntime", "openvino"})
    rows = out["variants"]
    assert out["input"] == [2, 4, 128, 128]
    assert set(rows) == {"torch_eager", "torch_onednn", "channels_last", "onnxruntime", "openvino"}
    assert rows["torch_eager"]["ratio_to_eager"] == 1.0
    for name, row in rows.items():
        assert row["median_ms"] > 0 and row["ratio_to_eager"] > 0, name
    assert rows["onnxruntime"]["max_prob_diff"] <= nets.TOLERANCE["onnxruntime"]
    assert rows["openvino"]["max_prob_diff"] <= nets.TOLERANCE["openvino"]
    assert rows["channels_last"]["max_prob_diff"] <= 1e-5 and rows["torch_onednn"]["max_prob_diff"] <= 1e-5
    # Dynamic int8 quantization has nothing to quantize in a convolutional network: reported, not timed.
    assert "quantized no layer" in out["skipped"]["torch_int8_dynamic"]
    report = {"threads": 1, "environment": {}, "networks": {"deepgrow2d": {"batch_2": out,
                                                                           "cuda": {"skipped": "needs a CUDA device"}}},
              "wall_s": 1.0}
    text = format_report(report)
    assert "onnxruntime" in text and "not measured: RuntimeError: quantize_dynamic quantized no layer" in text
