"""``claraseg pretrain``: the seeded, one-command recipe that trains the default bundles on CPU.

Data: the ``train`` split of the scan-level split of ../shared/data (``claraseg/evaluate/scan_split.json``)
and synthetic phantoms; the scans of the ``validation`` and ``test`` splits and fresh phantom seeds
(:data:`EVAL_PHANTOM_SEEDS`) never reach training. Everything that made the weights (data, held-out
scans, settings, seed, iterations, wall time, final loss, ROI-space validation Dice and the click
protocol on the validation split) is written into the bundle's ``configs/training_history.json``.

The training length is a wall-time budget (``--minutes``) or, to reproduce a run exactly on CPU, the
number of iterations the run recorded (``--iterations``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from claraseg.errors import TrainingDataError
from claraseg.evaluate.protocol import dice
from claraseg.io import read_image, read_labels_json
from claraseg.models.bundle import (
    METADATA,
    TRAIN,
    read_bundle,
    read_training_history,
    save_weights,
    write_json_atomic,
    write_training_history,
)
from claraseg.models.defaults import create_bundle
from claraseg.models.sources import (
    EVAL_PHANTOM_SEEDS,
    MIN_VOXELS,
    TRAIN_PHANTOM_SEEDS,
    draw_structure,
    load_split_sources,
    source_weights,
)
from claraseg.models.train_config import TRAIN_SAMPLING_KEYS, check_train_config, train_sampling
from claraseg.models.training import (
    TrainingVolume,
    make_loss,
    make_sample,
    network_input,
    predictor,
)
from claraseg.train.loop import (
    CheckpointHandler,
    ProgressHandler,
    StreamSource,
    TrainingLoop,
    cosine_schedule,
)

log = logging.getLogger("claraseg.pretrain")

#: Where the packaged default bundles live.
PACKAGED_BUNDLES = Path(__file__).resolve().parent / "bundles"

DEFAULT_SEED = 20260
#: Pre-training validates (interactive kinds) and saves the weights this often (seconds).
SAVE_EVERY_S = 300.0
KINDS = ("deepgrow3d", "deepgrow2d", "dextr3d", "segmentation")


def split_record(data_dir: Path) -> dict[str, Any]:
    """What a stage trained on the ``train`` split kept out: the scans of ``validation`` and ``test``."""
    from claraseg.evaluate.split import split_scans

    out: dict[str, Any] = {"split": "claraseg/evaluate/scan_split.json", "phantom_seeds": EVAL_PHANTOM_SEEDS}
    for split in ("validation", "test"):
        out[split] = [s.name if s.source == s.name else f"{s.source}/{s.name}" for s in split_scans(data_dir, split)]
    return out


def load_sources(data_dir: Path, intensity: dict, *, heldout: bool = False,
                 hippocampus_limit: int | None = None) -> dict[str, list[TrainingVolume]]:
    """Training volumes per source: the ``train`` split of the sample data (``heldout=False``) or the
    ``validation`` split (:mod:`claraseg.models.sources`)."""
    return load_split_sources(Path(data_dir), intensity, "validation" if heldout else "train",
                              hippocampus_limit=hippocampus_limit)


def run_stream(net: torch.nn.Module, opt: torch.optim.Optimizer, step_loss, draw, lr0: float, minutes: float,
               iterations: int | None, handlers) -> TrainingLoop:
    """Pre-training on the shared loop: batches drawn by ``draw()`` from the recipe's seeded generators,
    a cosine learning rate from ``lr0`` to 5 % over ``iterations`` steps or, without them, ``minutes``."""
    loop = TrainingLoop(net, opt, step_loss, StreamSource(draw), max_iterations=iterations or math.inf,
                        max_time_s=None if iterations else 60.0 * minutes, lr_schedule=cosine_schedule(lr0),
                        handlers=handlers)
    loop.run()
    return loop


def _validation_set(kind: str, settings: dict, data_dir: Path, seed: int, n: int = 16):
    """Fixed ROI-space samples of held-out structures, for a quick Dice during training."""
    rng = np.random.default_rng(seed + 1)
    sources = load_sources(data_dir, settings["intensity"], heldout=True, hippocampus_limit=5)
    samples = []
    while len(samples) < n:
        vol, st = draw_structure(sources, rng)
        r = make_sample(kind, vol, st, settings, rng)
        if r is not None:
            samples.append(r)
    return samples


def _validate(net, kind: str, samples) -> float:
    run = predictor(net, kind)
    return float(np.mean([dice(run(x) > 0.5, y[0].numpy()) for x, y in samples]))


def _update_metadata(bundle_dir: Path, training: dict[str, Any], data_source: str) -> None:
    """The stage's record into ``configs/training_history.json``; the data source into the metadata."""
    write_training_history(bundle_dir, training)
    meta_path = bundle_dir / METADATA
    meta = json.loads(meta_path.read_text())
    meta["data_source"] = data_source
    write_json_atomic(meta_path, meta)


def widen_input_channels(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Trained weights for a network whose input gained channels (e.g. DEXTR3D taking clicks and the
    current mask as well): a tensor that differs from ``target``'s only in having fewer input channels
    (axis 1, a first-layer convolution) is zero-padded there, so the widened network starts out computing
    exactly what the trained one did and learns to use the new channels. Any other mismatch is left to
    ``load_state_dict`` to report."""
    out = {}
    for k, v in state.items():
        t = target.get(k)
        if (t is not None and v.ndim >= 2 and t.ndim == v.ndim and t.shape[0] == v.shape[0]
                and t.shape[2:] == v.shape[2:] and t.shape[1] > v.shape[1]):
            w = torch.zeros_like(t)
            w[:, :v.shape[1]] = v
            v = w
        out[k] = v
    return out


def set_input_channels(bundle_dir: Path, kind: str, channels: list[str]) -> bool:
    """Give an interactive bundle these input channels (``claraseg pretrain --channels``): the
    ``claraseg.channels``, the network's ``in_channels`` and the model-zoo input description. Only the
    channel lists the engine knows for the kind are accepted. Returns whether anything changed; the
    weights are widened when the bundle is trained further (:func:`widen_input_channels`)."""
    from claraseg.models.bundle import DEXTR_CHANNELS, INFERENCE
    from claraseg.models.defaults import SETTINGS

    allowed = [list(c) for c in DEXTR_CHANNELS] if kind == "dextr3d" else [SETTINGS[kind]["channels"]]
    if list(channels) not in allowed:
        raise TrainingDataError(f"--channels {','.join(channels)}: a {kind} model takes "
                                + " or ".join(",".join(c) for c in allowed))
    meta_path, inf_path = bundle_dir / METADATA, bundle_dir / INFERENCE
    meta, inference = json.loads(meta_path.read_text()), json.loads(inf_path.read_text())
    if meta.get("claraseg", {}).get("channels") == list(channels):
        return False
    meta["claraseg"]["channels"] = list(channels)
    meta["image_classes"] = "channels: " + ", ".join(channels)
    inp = meta.get("network_data_format", {}).get("inputs", {}).get("image")
    if isinstance(inp, dict):
        inp["num_channels"] = len(channels)
        inp["channel_def"] = {str(i): c for i, c in enumerate(channels)}
    inference["network_def"]["in_channels"] = len(channels)
    write_json_atomic(inf_path, inference)
    write_json_atomic(meta_path, meta)
    return True


#: ``claraseg pretrain --network`` -> the ``_target_`` of the interactive bundles' ``network_def``.
NETWORKS = {"unet": "UNet", "context": "claraseg.models.nets.ContextUNet"}


def set_network(bundle_dir: Path, kind: str, name: str) -> bool:
    """Give a DeepGrow 3D or DEXTR3D bundle the network ``name`` of :data:`NETWORKS` (``claraseg pretrain
    --network``), keeping the UNet's shape; returns whether anything changed. With ``--continue`` the
    trained UNet weights are carried over (:func:`claraseg.models.nets.unet_to_context_state`)."""
    from claraseg.models.bundle import INFERENCE

    if name not in NETWORKS:
        raise TrainingDataError(f"--network {name}: choose from {', '.join(NETWORKS)}")
    if kind not in ("deepgrow3d", "dextr3d"):
        raise TrainingDataError(f"--network {name}: only the 3D interactive models (deepgrow3d, dextr3d) take it")
    inf_path = bundle_dir / INFERENCE
    inference = json.loads(inf_path.read_text())
    if inference["network_def"].get("_target_") == NETWORKS[name]:
        return False
    inference["network_def"]["_target_"] = NETWORKS[name]
    write_json_atomic(inf_path, inference)
    return True


def _warm_state(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trained ``state`` fitted to ``net``: input channels widened, and a UNet's weights carried into a
    :class:`~claraseg.models.nets.ContextUNet` (its context branch starting fresh)."""
    from claraseg.models.nets import ContextUNet, unet_to_context_state

    state = {k: v.float() for k, v in state.items()}
    if isinstance(net, ContextUNet) and not any(k.startswith("context.") for k in state):
        return unet_to_context_state(state, net.state_dict())
    return widen_input_channels(state, net.state_dict())


def train_interactive(kind: str, bundle_dir: Path, data_dir: Path, *, minutes: float, iterations: int | None,
                      seed: int, progress: Callable[[str], None] = log.info, warm_start: bool = False,
                      lr_scale: float = 1.0, channels_option: str | None = None,
                      train_overrides: dict[str, Any] | None = None, network_option: str | None = None) -> dict[str, Any]:
    """Train a DeepGrow 2D/3D or DEXTR3D bundle in place; returns the training record.

    With ``warm_start`` the bundle's current weights are trained further (a further stage of the recipe,
    typically with ``lr_scale`` < 1); the earlier stages stay in the record under ``previous_stages``.
    ``train_overrides`` replace sampling keys of the bundle's train.json for this run
    (:data:`~claraseg.models.train_config.TRAIN_SAMPLING_KEYS`); the recipe records every sampling key it ran
    with as ``--train KEY=VALUE``.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    bundle = read_bundle(bundle_dir)
    settings = bundle.settings
    train_cfg = {**json.loads((bundle_dir / TRAIN).read_text()), **check_train_overrides(train_overrides)}
    check_train_config(train_cfg)
    net = bundle.build_network().float().train()
    previous: list[dict[str, Any]] = []
    if warm_start:
        state = torch.load(bundle.weights_path, map_location="cpu", weights_only=True)
        net.load_state_dict(_warm_state(net, state))
        old = read_training_history(bundle_dir)
        previous = list(old.get("previous_stages", [])) + [{k: old.get(k) for k in (
            "recipe", "seed", "iterations", "minutes", "learning_rate", "validation_dice_roi", "p_model_in_loop",
            "max_loop_clicks", "p_correction", "box_scale_range", "roi_scale_range", "settings_at_training")
            if k in old}]
    sources = load_sources(data_dir, settings["intensity"])
    counts = {k: sum(len(v.structures) for v in vols) for k, vols in sources.items()}
    progress(f"{kind}: {sum(counts.values())} training structures {counts}")
    val = _validation_set(kind, settings, data_dir, seed)
    progress(f"{kind}: validation Dice before training {_validate(net, kind, val):.3f}")
    opt = torch.optim.Adam(net.parameters(), lr=train_cfg["learning_rate"])
    loss_fn = make_loss(kind)
    run = predictor(net, kind)
    lr0, batch = float(train_cfg["learning_rate"]) * lr_scale, int(train_cfg["batch_size"])
    sampling = train_sampling(kind, train_cfg)

    def draw():
        xs, ys = [], []
        while len(xs) < batch:
            vol, st = draw_structure(sources, rng, p_by_size=float(sampling["p_by_size"]),
                                     by_size_power=float(sampling["by_size_power"]))
            r = make_sample(kind, vol, st, settings, rng, run, train_cfg)
            if r is not None:
                xs.append(network_input(r[0], kind)[0])
                ys.append(network_input(r[1], kind)[0])
        return torch.stack(xs), torch.stack(ys)

    history: list[dict[str, Any]] = []

    def validate_and_save(loop: TrainingLoop) -> None:
        vd = _validate(net, kind, val)
        history.append({"iteration": loop.state.iteration, "minutes": round(loop.state.elapsed_s / 60, 1),
                        "val_dice": round(vd, 4)})
        progress(f"{kind}: it {loop.state.iteration} validation Dice {vd:.3f}; saving weights")
        save_weights(net, bundle.weights_path)

    logger = ProgressHandler(progress, kind)
    loop = run_stream(net, opt, lambda m, b: loss_fn(m(b[0]), b[1]), draw, lr0, minutes, iterations,
                      [logger, CheckpointHandler(validate_and_save, every_s=SAVE_EVERY_S)])
    it, losses = loop.state.iteration, logger.losses
    save_weights(net, bundle.weights_path)
    vd = _validate(net, kind, val)
    progress(f"{kind}: done, {it} iterations, final validation Dice {vd:.3f}")
    recipe = f"claraseg pretrain --models {kind} --seed {seed} --iterations {it}"
    if warm_start:
        recipe += f" --continue --lr-scale {lr_scale:g}"
    if channels_option:
        recipe += f" --channels {channels_option}"
    if network_option:
        recipe += f" --network {network_option}"
    recipe += train_recipe_options(kind, train_cfg)
    record = {
        "recipe": recipe,
        "previous_stages": previous,
        "seed": seed, "iterations": it, "minutes": round(loop.state.elapsed_s / 60, 1),
        "threads": torch.get_num_threads(),
        "batch_size": batch, "learning_rate": lr0, "schedule": "cosine to 5%", "loss": train_cfg["loss"],
        # The click sampling the stage used (train.json's values or the defaults), as in its recipe.
        "p_model_in_loop": sampling["p_model_in_loop"], "max_loop_clicks": sampling["max_loop_clicks"],
        "p_correction": sampling.get("p_correction"),  # DEXTR3D with clicks: share of correction samples
        "box_scale_range": sampling.get("box_scale_range"),  # DEXTR3D
        "roi_scale_range": sampling.get("roi_scale_range"),  # DeepGrow; None: uniform 0.85-1.4
        "settings_at_training": {k: settings.get(k) for k in ("first_click_spacing_mm", "fill", "roi_size",
                                                               "train_roi_size", "guidance", "channels",
                                                               "margin_mm", "margin_rel", "threshold")},
        "final_loss": round(float(np.mean(losses[-100:])), 4) if losses else None,
        "validation_dice_roi": round(vd, 4), "validation_history": history,
        "data": {"split": "claraseg/evaluate/scan_split.json (train)", "sources": source_weights(sources),
                 "structures_per_source": counts, "min_voxels": MIN_VOXELS, "p_by_size": sampling["p_by_size"],
                 "by_size_power": sampling["by_size_power"],
                 "train_phantom_seeds": TRAIN_PHANTOM_SEEDS},
        "heldout": split_record(Path(data_dir)),
        "augmentation": "random rotation (25 deg) and flips, ROI spacing (object scale), intensity scale/shift/gamma/"
                        "inversion/blur/thick-slice/noise, simulated clicks (ANCHORS protocol and random variants, "
                        "network in the loop), corrupted current masks"
                        + ("; domain randomisation (synthetic contrasts per label, bias field, slice thickness "
                           "0.5-8 mm, partial volume, fields of view cutting the object, first clicks weighted "
                           "toward objects cut by the ROI or the scan)" if sampling.get("domain_randomization") else ""),
        "torch": torch.__version__,
    }
    _update_metadata(Path(bundle_dir), record,
                     "../shared/data (TotalSegmentator example CT and MR, voxelmorph brain MR, MSD Task04 "
                     "hippocampus) and claraseg synthetic phantoms; class-agnostic targets")
    return record


def check_train_overrides(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``--train`` values: only the sampling keys of train.json (checked with the rest of the config)."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(TRAIN_SAMPLING_KEYS))
    if unknown:
        raise TrainingDataError(f"--train {', '.join(unknown)}: not a sampling key of train.json; "
                                f"choose from {', '.join(TRAIN_SAMPLING_KEYS)}")
    return overrides


def train_recipe_options(kind: str, train_cfg: dict[str, Any]) -> str:
    """The ``--train KEY=VALUE`` options that replay a stage's click sampling exactly: every sampling key
    of ``kind`` with the value the stage used (train.json's or the default)."""
    out = ""
    for key, value in train_sampling(kind, train_cfg).items():
        text = json.dumps(value, separators=(",", ":"))
        out += f" --train '{key}={text}'" if "[" in text else f" --train {key}={text}"
    return out


def train_segmentation(bundle_dir: Path, data_dir: Path, *, minutes: float, iterations: int | None, seed: int,
                       progress: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Train the demo segmentation bundle on the sample CT (its preprocessing read from inference.json)."""
    from monai.transforms import (
        Compose,
        EnsureChannelFirst,
        Orientation,
        RandAffined,
        RandCropByPosNegLabeld,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
        Spacing,
    )
    from monai.utils import set_determinism

    from claraseg.models.zoo import ZooPipeline, to_metatensor

    set_determinism(seed=seed)
    torch.manual_seed(seed)
    bundle = read_bundle(bundle_dir)
    labels = {int(k): v for k, v in bundle.settings["labels"].items()}
    d = Path(data_dir) / "ct_abdomen_3mm"
    image = read_image(d / "image.nii.gz")
    label = read_image(d / "label.nii.gz", label=True)
    by_name = {info.name: v for v, info in read_labels_json(d / "labels.json").items()}
    lab = np.zeros(label.array.shape, np.uint8)
    for value, name in labels.items():
        lab[label.array == by_name[name]] = value
    pipe = ZooPipeline(bundle.inference)
    # The label goes through the same geometric steps (nearest neighbour) as the image.
    img_t = pipe.preprocess(image)[pipe.image_key]
    lab_img = label.with_array(lab)
    spacing = bundle.settings["spacing"]
    lab_t = Spacing(pixdim=spacing, mode="nearest")(Orientation(axcodes="RAS")(
        EnsureChannelFirst()(to_metatensor(lab_img.array, lab_img))))
    if tuple(lab_t.shape) != tuple(img_t.shape):
        raise TrainingDataError(f"preprocessed label {tuple(lab_t.shape)} and image {tuple(img_t.shape)} differ")
    roi = [64, 64, 64]
    aug = Compose([
        RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=roi, pos=3, neg=1,
                               num_samples=1),
        RandAffined(keys=["image", "label"], prob=0.7, rotate_range=(0.2, 0.2, 0.2), scale_range=(0.15,) * 3,
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandScaleIntensityd(keys="image", factors=0.15, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
        RandGaussianNoised(keys="image", std=0.03, prob=0.3),
    ])
    aug.set_random_state(seed=seed)
    net = bundle.build_network().float().train()
    train_cfg = json.loads((Path(bundle_dir) / TRAIN).read_text())
    lr0, batch = float(train_cfg["learning_rate"]), int(train_cfg["batch_size"])
    opt = torch.optim.Adam(net.parameters(), lr=lr0)
    loss_fn = make_loss("segmentation")
    data = {"image": img_t.as_tensor(), "label": lab_t.as_tensor()}

    def draw():
        items = [aug(dict(data))[0] for _ in range(batch)]
        x = torch.stack([torch.as_tensor(i["image"]) for i in items]).float()
        y = torch.stack([torch.as_tensor(i["label"]) for i in items]).float()
        return x, y

    logger = ProgressHandler(progress, "segmentation")
    loop = run_stream(net, opt, lambda m, b: loss_fn(m(b[0]), b[1]), draw, lr0, minutes, iterations,
                      [logger, CheckpointHandler(lambda loop: save_weights(net, bundle.weights_path),
                                                 every_s=SAVE_EVERY_S)])
    it, losses = loop.state.iteration, logger.losses
    save_weights(net, bundle.weights_path)
    net.eval()
    pred = pipe.run(net, image)
    scores = {name: round(dice(pred == v, lab == v), 4) for v, name in labels.items()}
    progress(f"segmentation: done, {it} iterations, Dice on its own training CT {scores}")
    record = {
        "recipe": f"claraseg pretrain --models segmentation --seed {seed} --iterations {it}",
        "seed": seed, "iterations": it, "minutes": round(loop.state.elapsed_s / 60, 1),
        "threads": torch.get_num_threads(), "batch_size": batch, "learning_rate": lr0, "loss": train_cfg["loss"],
        "final_loss": round(float(np.mean(losses[-100:])), 4) if losses else None, "crop": roi,
        "data": "ct_abdomen_3mm (one CT, TotalSegmentator labels) - demo grade",
        "dice_on_training_ct": scores,
        "augmentation": "pos/neg crops, rotation 0.2 rad, scale 15%, intensity scale/shift, noise",
    }
    _update_metadata(Path(bundle_dir), record, "../shared/data/ct_abdomen_3mm: one abdominal CT with "
                     "TotalSegmentator labels. Demo-grade until fine-tuned on your own data.")
    meta = json.loads((Path(bundle_dir) / METADATA).read_text())
    meta["eval_metrics"] = {"mean_dice_training_ct": round(float(np.mean(list(scores.values()))), 4)}
    meta["intended_use"] = ("Demo only: trained on a single CT, it shows auto-segmentation working; fine-tune it on "
                            "your own labelled scans before relying on it. Not for diagnostic use.")
    write_json_atomic(Path(bundle_dir) / METADATA, meta)
    return record


def pretrain(models: list[str], out: Path, data_dir: Path, *, minutes: float | dict[str, float] = 30.0,
             iterations: int | None = None,
             seed: int = DEFAULT_SEED, fresh: bool = True, evaluate: bool = True,
             warm_start: bool = False, lr_scale: float = 1.0, channels: list[str] | None = None,
             train_overrides: dict[str, Any] | None = None, network: str | None = None) -> dict[str, Any]:
    """Create (``fresh``) and train the named default bundles under ``out``; returns their records.
    ``warm_start`` continues the interactive bundles from their current weights (implies not fresh).
    ``channels`` sets the input channels of the interactive bundles (:func:`set_input_channels`; with
    ``warm_start`` the trained weights are kept and widened). ``train_overrides`` replace sampling keys
    of the interactive bundles' train.json for this run (:func:`train_interactive`). ``network`` sets the
    3D interactive bundles' network (:func:`set_network`)."""
    fresh = fresh and not warm_start
    check_train_overrides(train_overrides)
    if train_overrides and "segmentation" in models:
        raise TrainingDataError("--train sets the click sampling of the interactive bundles; "
                                "train the segmentation bundle in a separate run")
    records = {}
    for kind in models:
        if kind not in KINDS:
            raise TrainingDataError(f"unknown model {kind!r}; choose from {', '.join(KINDS)}")
        bundle_dir = Path(out) / kind
        budget = minutes.get(kind, 30.0) if isinstance(minutes, dict) else float(minutes)
        if fresh or not (bundle_dir / METADATA).exists():
            create_bundle(bundle_dir, kind)
        if network and kind in ("deepgrow2d", "segmentation"):
            raise TrainingDataError(f"--network {network}: only the 3D interactive models (deepgrow3d, dextr3d) take it")
        if channels and kind != "segmentation":
            set_input_channels(bundle_dir, kind, channels)
        if network:
            set_network(bundle_dir, kind, network)
        if kind == "segmentation":
            records[kind] = train_segmentation(bundle_dir, data_dir, minutes=budget, iterations=iterations, seed=seed)
        else:
            records[kind] = train_interactive(kind, bundle_dir, data_dir, minutes=budget, iterations=iterations,
                                              seed=seed, warm_start=warm_start, lr_scale=lr_scale,
                                              channels_option=",".join(channels) if channels else None,
                                              train_overrides=train_overrides, network_option=network)
            if evaluate:
                records[kind]["validation_metrics"] = record_validation(bundle_dir, data_dir)
    return records


def record_validation(bundle_dir: Path, data_dir: Path) -> dict[str, Any]:
    """Run the click protocol (:func:`claraseg.evaluate.scans.check_bundle`: 5 interactions, the
    validation split, the engine) on a trained bundle; record it in its training history and the mean
    Dice after the first and last interaction as the metadata's ``eval_metrics``."""
    from claraseg.evaluate.scans import check_bundle

    result = check_bundle(bundle_dir, data_dir)
    history = read_training_history(bundle_dir)
    history["validation_metrics"] = result
    write_training_history(bundle_dir, history)
    meta_path = Path(bundle_dir) / METADATA
    meta = json.loads(meta_path.read_text())
    meta["eval_metrics"] = {f"mean_dice_at_{n}_validation_split": v
                            for n, v in result["summary"]["mean_dice_at"].items() if v is not None}
    write_json_atomic(meta_path, meta)
    return result


def default_data_dir() -> Path:
    """``$CLARASEG_DATA`` or ``../shared/data`` beside the checkout."""
    env = os.environ.get("CLARASEG_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
