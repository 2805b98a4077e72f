"""The training engine: one configuration trained, evaluated, checkpointed and resumed.

Engine functions take objects and return plain dicts (torchvision's references/detection/engine.py):
`train_one_epoch(...) -> dict`, `evaluate(...) -> dict`; `fit(...)` runs the whole loop and hands a
flat dict of float metrics to a callback after every epoch. Nothing here knows who schedules it.
"""
from __future__ import annotations

import gc
import json
import math
import os
import random
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_iou

from detector import config as C
from detector import matching
from detector.config import TrainConfig
from detector.data import DecodedDataset, DetectionDataset, EpochSampler, collate
from detector.metrics import is_better
from detector.model import DataStats, build_model, count_params, detections_per_img
from detector.precision import amp_dtype, autocast
from detector.transforms import Augment

IOU_SCORE_THRESH = 0.5  # predictions at or above this score count for iou_per_pred / iou_per_gt
# The one field a resume may change: weights, optimizer state and schedule are float32 in every amp
# mode, so a run can continue in another precision (the gradient scaler starts fresh when the
# checkpoint has none, as one written without fp16 has). Any other changed field is refused.
RESUME_MAY_CHANGE = ("amp",)
LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


class NonFiniteLossError(RuntimeError):
    """The loss was NaN or infinite for `nonfinite_patience` consecutive steps."""


class OutOfMemoryError(RuntimeError):
    """CUDA ran out of memory; the message states the batch and image size that did not fit."""


@dataclass
class Setup:
    """Runtime state that is not configuration: where to run and what the data looks like."""

    device: torch.device
    stats: DataStats
    image_scale: float          # model input scale relative to the data (for 'auto' anchors)
    amp_dtype: torch.dtype | None  # autocast dtype of training, evaluation, prediction and latency alike

    @staticmethod
    def create(cfg: TrainConfig, train: DecodedDataset, device: str | torch.device | None = None) -> "Setup":
        """Raises ConfigError when the device cannot run `cfg.amp` (bf16 on a GPU without bfloat16)."""
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        short_sides = sorted(min(im.shape) for im in train.images)
        scale = cfg.min_size / short_sides[len(short_sides) // 2]
        return Setup(dev, train.stats(), scale, amp_dtype(cfg.amp, dev))


# ----------------------------------------------------------------------------------------------
# Optimisation


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over the trainable parameters only."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, iteration: int, iters_per_epoch: int) -> float:
    """Multiplier of `cfg.lr` at a (0-based) iteration: linear warm-up, then the schedule."""
    warm = cfg.warmup_iters if cfg.warmup_iters is not None else int(round(cfg.warmup_epochs * iters_per_epoch))
    w = 1.0 if iteration >= warm else cfg.warmup_factor + (1 - cfg.warmup_factor) * iteration / warm
    total = cfg.epochs * iters_per_epoch
    if cfg.schedule == "cosine":
        s = 0.5 * (1 + math.cos(math.pi * min(iteration, total) / total))
    elif cfg.schedule == "step":
        epoch = iteration / iters_per_epoch
        s = cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    else:
        s = 1.0
    return w * s


def build_scheduler(cfg: TrainConfig, optimizer, iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(cfg, it, iters_per_epoch))


# ----------------------------------------------------------------------------------------------
# One epoch


def train_one_epoch(model, optimizer, scheduler, loader, *, setup: Setup, cfg: TrainConfig,
                    scaler: torch.amp.GradScaler, epoch: int, progress: bool = False) -> dict:
    """Train one epoch; return mean losses, images/s and the last learning rate. `progress` shows a
    bar with the running loss.

    Raises NonFiniteLossError after `cfg.nonfinite_patience` consecutive non-finite losses (a
    non-finite step is skipped, so the weights never see it).
    """
    model.train()
    dev, non_blocking = setup.device, setup.device.type == "cuda"
    sums = torch.zeros(len(LOSS_KEYS) + 1, dtype=torch.float64)
    steps = images = bad = 0
    it = loader
    if progress:
        from tqdm import tqdm
        it = tqdm(loader, desc=f"epoch {epoch}", leave=False, file=sys.stderr, dynamic_ncols=True)
    t0 = time.perf_counter()
    for imgs, targets in it:
        imgs = [im.to(dev, non_blocking=non_blocking) for im in imgs]
        targets = [{"boxes": t["boxes"].to(dev, non_blocking=non_blocking),
                    "labels": t["labels"].to(dev, non_blocking=non_blocking)} for t in targets]
        with autocast(dev, setup.amp_dtype):
            loss_dict = model(imgs, targets)
        parts = torch.stack([loss_dict[k].float() for k in LOSS_KEYS])
        loss = parts.sum()
        values = torch.cat([loss.detach()[None], parts.detach()]).double().cpu()  # the one sync per step
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(values).all():
            bad += 1
            if bad >= cfg.nonfinite_patience:
                raise NonFiniteLossError(
                    f"non-finite loss for {bad} consecutive steps at epoch {epoch}, step {steps + 1} "
                    f"(lr={optimizer.param_groups[0]['lr']:.3g}, losses "
                    f"{dict(zip(('loss', *LOSS_KEYS), values.tolist()))}); lower lr, lengthen warm-up "
                    f"or enable gradient clipping")
            scheduler.step()
            continue
        bad = 0
        scaler.scale(loss).backward()
        if cfg.clip_grad_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                           cfg.clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        sums += values
        steps += 1
        images += len(imgs)
        if progress:
            it.set_postfix(loss=f"{values[0].item():.3f}")
    elapsed = time.perf_counter() - t0
    means = (sums / max(steps, 1)).tolist()
    return {"loss": means[0], **dict(zip(LOSS_KEYS, means[1:])), "epoch_time_s": elapsed,
            "train_img_per_s": images / elapsed if elapsed > 0 else 0.0,
            "lr": optimizer.param_groups[0]["lr"]}


def _mean_best_iou(preds: list[torch.Tensor], gts: list[torch.Tensor]) -> tuple[float, float]:
    """(mean over predictions of their best IoU with any ground truth,
        mean over ground truths of their best IoU with any prediction); 0 where the other side is empty."""
    per_pred, per_gt = [], []
    for p, g in zip(preds, gts):
        if len(p) and len(g):
            iou = box_iou(p, g)  # (P, G)
            per_pred.append(iou.max(dim=1).values)
            per_gt.append(iou.max(dim=0).values)
        else:
            per_pred.append(torch.zeros(len(p)))
            per_gt.append(torch.zeros(len(g)))
    cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0)  # noqa: E731
    pp, pg = cat(per_pred), cat(per_gt)
    return (pp.mean().item() if len(pp) else 0.0), (pg.mean().item() if len(pg) else 0.0)


@torch.no_grad()
def detect(model, images: list[torch.Tensor], device: torch.device, dtype: torch.dtype | None) -> list[dict]:
    """The model's detections ({boxes (N, 4) xyxy px, scores (N,), labels (N,)}, on the CPU) for
    `images` (each (C, H, W) in [0, 1]), in eval mode under the autocast of `dtype`: the one place
    evaluation, `detector.predict` and the detection figures run a model, so they agree."""
    model.eval()
    x = [im.to(device, non_blocking=device.type == "cuda") for im in images]
    with autocast(device, dtype):
        out = model(x)
    return [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()} for o in out]


def predict_batches(model, loader, setup: Setup):
    """Yield (predictions, targets) per batch, predictions on the CPU."""
    for imgs, targets in loader:
        yield detect(model, imgs, setup.device, setup.amp_dtype), targets


def evaluate(model, loader, setup: Setup, max_detections: int, score_threshold: float | None = None) -> dict:
    """mAP (torchmetrics, faster-coco-eval backend), the study's IoU curves and the operating point
    on a loader.

    `max_detections` is the per-image cap COCO evaluation counts; it must be at least the model's
    `box_detections_per_img`, or numerous objects silently lower the score. The operating point
    (detector/matching.py, IoU 0.5): `f1`, `precision` and `recall` at `score_threshold`, the score
    that maximises F1 on these images when none is given (validation chooses it: it becomes the
    model file's `score_threshold`; the test images are scored at validation's choice).
    """
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval",
                                  max_detection_thresholds=[1, 10, max(100, max_detections)])
    preds, gts, matched = [], [], []
    t0 = time.perf_counter()
    n = 0
    for out, targets in predict_batches(model, loader, setup):
        metric.update(out, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        for o, t in zip(out, targets):
            preds.append(o["boxes"][o["scores"] >= IOU_SCORE_THRESH])
            gts.append(t["boxes"])
            matched.append(matching.match(o["boxes"].numpy(), o["scores"].numpy(), t["boxes"].numpy(),
                                          o["labels"].numpy(), t["labels"].numpy()))
        n += len(out)
    eval_time = time.perf_counter() - t0
    m = metric.compute()
    iou_pred, iou_gt = _mean_best_iou(preds, gts)
    op = matching.operating_point(matched, score_threshold)
    return {"map50": float(m["map_50"]), "map": float(m["map"]), "map75": float(m["map_75"]),
            "map_small": float(m["map_small"]), "iou_per_pred": iou_pred, "iou_per_gt": iou_gt,
            "f1": op.f1, "precision": op.precision, "recall": op.recall, "score_threshold": op.threshold,
            "eval_time_s": eval_time, "eval_img_per_s": n / eval_time if eval_time > 0 else 0.0}


@torch.no_grad()
def latency_ms(model, image: torch.Tensor, setup: Setup, repeats: int = 20, warmup: int = 3) -> dict:
    """Inference time of one image at batch size 1 on the setup's device, in ms.

    Warm-up and timed passes run under the same settings (eval mode, no_grad, the setup's autocast),
    each timed pass alone (synchronised on CUDA); returns {"latency_ms": median over the timed passes,
    "latency_n": how many}. The median, not the mean: a pass slowed by something else on the machine
    moves the mean, not the median. Faster R-CNN's time depends on how many proposals and detections
    survive, so measure the trained model, on a device nothing else is using (search.latency)."""
    model.eval()
    x = [image.to(setup.device)]
    sync = torch.cuda.synchronize if setup.device.type == "cuda" else (lambda: None)
    times = []
    with autocast(setup.device, setup.amp_dtype):
        for i in range(warmup + repeats):
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000)
    return {"latency_ms": statistics.median(times), "latency_n": len(times)}


_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak_mem(device: torch.device) -> None:
    """Start a new memory peak: CUDA's allocator statistics, or on Linux the process's resident-set
    high-water mark (writing 5 to /proc/self/clear_refs, Linux >= 4.0). A worker process that Ray
    reuses for several trials then reports each trial's own peak, not the largest of any before it."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: peak_mem_mb falls back to the process's lifetime peak


def peak_mem_mb(device: torch.device) -> float:
    """Peak memory since the last `reset_peak_mem`, in MiB: on CUDA the memory the caching allocator
    reserved (what a trial sharing the GPU cannot use; `peak_alloc_mb` is the part tensors held), else
    the process's resident-set high-water mark (VmHWM; the lifetime peak where that cannot be reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_reserved(device) / 2 ** 20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def limit_gpu_memory(device: torch.device, fraction: float | None) -> None:
    """Cap this process's CUDA caching allocator at `fraction` (0, 1] of the device's memory.

    Trials that share a GPU (a fractional `resources.gpu`) each cap themselves at their share, so
    the one that outgrows its share gets the out-of-memory error, not its neighbour. No-op on the CPU
    or without a fraction."""
    if device.type != "cuda" or fraction is None:
        return
    if not 0 < fraction <= 1:
        raise ValueError(f"gpu memory fraction must be in (0, 1], got {fraction!r}")
    torch.cuda.set_per_process_memory_fraction(fraction, device)


def release_gpu_memory(device: torch.device) -> None:
    """Return the cached blocks of a finished run to the GPU (Ray reuses worker processes for the
    next trial, and the neighbours on a shared GPU can use them meanwhile)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# Checkpoints


MODEL_FILE = "model.pt"  # the validation-best weights `fit` writes (see `_model_file`)


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a truncated `path`."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate((3, tuple(s["python"]), None))
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by this project (tensors and plain data only: weights_only=True)."""
    return torch.load(path, map_location="cpu", weights_only=True)


class LoadedModel(NamedTuple):
    """A trained model rebuilt from its file, with what the file says of its classes."""

    model: nn.Module            # in eval mode, on the device asked for
    cfg: TrainConfig
    class_names: list           # label c is class_names[c - 1]
    category_ids: list          # label c is category id category_ids[c - 1] of the training file
    score_threshold: float | None = None  # the operating threshold validation chose (None: the file has none)

    def categories(self) -> list[dict]:
        """COCO `categories`: [{"id": the training file's id, "name"}] in label order."""
        return [{"id": int(i), "name": n} for i, n in zip(self.category_ids, self.class_names)]


def model_from_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """The model in `model.pt`, `checkpoint.pt` or an exported `best.pt`, rebuilt and loaded. A file
    whose configuration has other fields than this version's is refused (ConfigError naming them):
    a missing field's default may not be what the model was trained with."""
    if not Path(path).is_file():
        raise C.ConfigError(f"{path}: no such model file")
    ck = load_checkpoint(path)
    missing, unknown = sorted(set(C.FIELD_NAMES) - set(ck["config"])), sorted(set(ck["config"]) - set(C.FIELD_NAMES))
    if missing or unknown:
        raise C.ConfigError(f"{path}: written with another version of the configuration (fields missing: {missing}; "
                            f"fields unknown to this version: {unknown}); retrain, or load it with the version "
                            f"that wrote it")
    cfg = C.from_dict(ck["config"], source=f"{path} [config]")
    stats = DataStats(**{**ck["stats"], "box_size_quantiles": tuple(ck["stats"]["box_size_quantiles"])})
    model = build_model(cfg, stats, load_weights=False, image_scale=ck["image_scale"])
    model.load_state_dict(ck["model"])
    names = list(ck.get("class_names", []))
    ids = list(ck.get("category_ids") or range(1, len(names) + 1))
    thr = ck.get("score_threshold")
    return LoadedModel(model.to(device).eval(), cfg, names, ids,
                       None if thr is None or not math.isfinite(thr) else float(thr))


# ----------------------------------------------------------------------------------------------
# The loop


EpochCallback = Callable[[dict, "Path | None"], None]


def _loader(dataset, cfg: TrainConfig, pin: bool, **kw) -> torch.utils.data.DataLoader:
    """A DataLoader for the whole run: with workers, they persist across epochs (forked once, not
    every epoch from a process that may hold a CUDA context). Its own generator: starting an
    iteration draws the workers' base seed from it, never from the global RNG that the model's RoI
    sampling uses (a fresh iterator per epoch without workers, one per run with them, would
    otherwise leave that RNG in different states)."""
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                       collate_fn=collate, pin_memory=pin, generator=torch.Generator().manual_seed(0),
                                       persistent_workers=cfg.num_workers > 0, **kw)


def fit(cfg: TrainConfig, train: DecodedDataset, val: DecodedDataset, out_dir: str | os.PathLike, *,
        test: DecodedDataset | None = None, device: str | torch.device | None = None,
        on_epoch: EpochCallback | None = None, resume: bool = False, progress: bool = False,
        log: Callable[[str], None] | None = None, checkpoint_epochs: Callable[[int], bool] | None = None,
        gpu_memory_fraction: float | None = None) -> dict:
    """Train `cfg` on `train`, evaluating on `val` after every epoch.

    With `test` (held-out images), each epoch that becomes the best on validation is also scored on
    `test`, under the same keys prefixed `test_` (`test_map50` ...): the epoch is chosen on
    validation only, and the test images never influence training, the best epoch or patience.

    Writes into `out_dir`: `checkpoint.pt` (latest, atomically), `model.pt` (best weights +
    configuration), `metrics.jsonl` (one object per epoch) and `summary.json`. The checkpoint is
    written after every epoch for which `checkpoint_epochs(epoch)` is true (default: every epoch),
    always after the run's last epoch (the last of `cfg.epochs`, or the one patience stops at), and
    after an epoch that rewrote model.pt (so model.pt is never ahead of the checkpoint).
    `on_epoch(metrics, checkpoint_path)` is called after each epoch, with the path on the epochs
    `checkpoint_epochs` (or the last) chose, the ones a caller persists, and None otherwise.
    With `resume`, training continues after the epoch stored in `out_dir/checkpoint.pt` (a changed
    `amp` is accepted, any other changed field refused: RESUME_MAY_CHANGE).
    `gpu_memory_fraction` caps this process's CUDA allocator at that share of the GPU (trials
    packed on one GPU; limit_gpu_memory). The CUDA cache is emptied when the run ends.
    Returns the summary dict. Raises NonFiniteLossError, OutOfMemoryError, ConfigError.
    """
    setup = Setup.create(cfg, train, device)
    limit_gpu_memory(setup.device, gpu_memory_fraction)
    try:
        return _fit(cfg, train, val, Path(out_dir), setup, test=test, on_epoch=on_epoch, resume=resume,
                    progress=progress, log=log or (lambda s: None),
                    checkpoint_epochs=checkpoint_epochs or (lambda epoch: True))
    finally:
        release_gpu_memory(setup.device)


def _fit(cfg: TrainConfig, train: DecodedDataset, val: DecodedDataset, out: Path, setup: Setup, *,
         test, on_epoch, resume: bool, progress: bool, log, checkpoint_epochs) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # initialisation of every layer that is not loaded
    model = build_model(cfg, setup.stats, image_scale=setup.image_scale).to(setup.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    max_dets = detections_per_img(cfg, setup.stats)

    train_set = DetectionDataset(train, cfg.in_channels, Augment(cfg.hflip, cfg.vflip, cfg.rot90, cfg.scale_jitter,
                                                                 cfg.crop_size), seed=cfg.seed)
    val_set = DetectionDataset(val, cfg.in_channels)
    pin = setup.device.type == "cuda"
    # One training loader for the run: its sampler draws each epoch's order from (seed, epoch) and
    # hands the epoch to the workers with every index, so a resumed run sees the same shuffles and
    # augmentations as an uninterrupted one, whatever the workers did before.
    sampler = EpochSampler(len(train_set), seed=cfg.seed)
    loader = _loader(train_set, cfg, pin, sampler=sampler, drop_last=False)
    val_loader = _loader(val_set, cfg, pin, shuffle=False)
    test_loader = None if test is None else _loader(DetectionDataset(test, cfg.in_channels), cfg, pin, shuffle=False)
    iters_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, iters_per_epoch)
    scaler = torch.amp.GradScaler(setup.device.type, enabled=setup.amp_dtype == torch.float16)

    history: list[dict] = []
    best, best_epoch, start = -math.inf, 0, 1
    ckpt_path = out / "checkpoint.pt"
    if resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        saved_cfg = C.from_dict(ck["config"], source=f"{ckpt_path} [config]")
        differing = [k for k in C.FIELD_NAMES if getattr(saved_cfg, k) != getattr(cfg, k)]
        if [k for k in differing if k not in RESUME_MAY_CHANGE]:
            raise C.ConfigError(f"{ckpt_path}: was written with another configuration; resume with the same one "
                                f"(differing fields: {differing}; only {list(RESUME_MAY_CHANGE)} may change)")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if scaler.is_enabled() and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])  # else the scaler starts fresh (none was saved)
        _set_rng_state(ck["rng"])
        history, best, best_epoch, start = ck["history"], ck["best"], ck["best_epoch"], ck["epoch"] + 1
        log(f"resumed from {ckpt_path} after epoch {ck['epoch']}"
            + (f"; amp {saved_cfg.amp} -> {cfg.amp}" if saved_cfg.amp != cfg.amp else ""))

    metrics_file = out / "metrics.jsonl"
    metrics_file.write_text("".join(json.dumps(h) + "\n" for h in history))  # drop epochs after the checkpoint
    total, trainable = count_params(model)
    stopped_early = False
    out_of_memory = False
    t_start = time.perf_counter()
    try:
        for epoch in range(start, cfg.epochs + 1):
            # Reseeding per epoch makes a resumed run draw the same RoI samples (and, through the
            # sampler, shuffles and augmentations) as an uninterrupted one, whatever happened before.
            torch.manual_seed(cfg.seed * 1_000_003 + epoch)
            sampler.set_epoch(epoch)
            reset_peak_mem(setup.device)
            m = train_one_epoch(model, optimizer, scheduler, loader, setup=setup, cfg=cfg, scaler=scaler,
                                epoch=epoch, progress=progress)
            m.update(evaluate(model, val_loader, setup, max_dets))
            m.update(epoch=float(epoch), peak_mem_mb=peak_mem_mb(setup.device),
                     params_total=float(total), params_trainable=float(trainable))
            if setup.device.type == "cuda":
                m["peak_alloc_mb"] = torch.cuda.max_memory_allocated(setup.device) / 2 ** 20
            improved = is_better(m[cfg.metric], best)
            if improved:  # the one rule: strictly better, so ties keep the first
                best, best_epoch = m[cfg.metric], epoch
                if test_loader is not None:
                    m.update({f"test_{k}": v for k, v in evaluate(model, test_loader, setup, max_dets,
                                                                   m["score_threshold"]).items()})
                atomic_save(_model_file(model, cfg, train, setup, epoch, best, m["score_threshold"]), out / MODEL_FILE)
            history.append(m)
            stopped_early = cfg.patience is not None and epoch - best_epoch >= cfg.patience
            persist = checkpoint_epochs(epoch) or epoch == cfg.epochs or stopped_early
            # checkpoint.pt is also written (locally, not handed on) when model.pt changed, so that
            # model.pt never holds an epoch a resume would train again.
            if persist or improved:
                atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                             "rng": _rng_state(), "config": C.to_dict(cfg), "history": history, "best": best,
                             "best_epoch": best_epoch, "stats": _stats_dict(setup.stats),
                             "image_scale": setup.image_scale, **_classes(train)}, ckpt_path)
            with open(metrics_file, "a") as f:
                f.write(json.dumps(m) + "\n")
            log(f"epoch {epoch}/{cfg.epochs}  loss {m['loss']:.4f}  map50 {m['map50']:.4f}  "
                f"map {m['map']:.4f}  iou/pred {m['iou_per_pred']:.3f}  iou/gt {m['iou_per_gt']:.3f}  "
                f"{m['train_img_per_s']:.1f} img/s")
            if on_epoch is not None:
                on_epoch(dict(m), ckpt_path if persist else None)
            if stopped_early:
                log(f"early stop: no better {cfg.metric} for {cfg.patience} epochs (best {best:.4f} at epoch {best_epoch})")
                break
    except torch.cuda.OutOfMemoryError:
        out_of_memory = True
    if out_of_memory:
        # Outside the except block, the traceback (and the activations its frames hold) is gone, so
        # dropping the model and optimizer really returns their memory to the GPU.
        del model, optimizer, scheduler, scaler, loader, val_loader, test_loader
        release_gpu_memory(setup.device)
        raise OutOfMemoryError(f"CUDA out of memory with batch_size={cfg.batch_size}, min_size={cfg.min_size}, "
                               f"max_size={cfg.max_size} ({cfg.backbone} {cfg.version}); lower batch_size or "
                               f"min_size")

    lat = latency_ms(model, val_set[0][0], setup)  # of the trained model (its detections cost NMS time)
    best_m = next((h for h in history if h["epoch"] == best_epoch), history[-1] if history else {})
    summary = {"metric": cfg.metric, "best_epoch": best_epoch, "best": best_m, "epochs_run": len(history),
               "stopped_early": stopped_early, "total_time_s": time.perf_counter() - t_start, **lat,
               "params_total": total, "params_trainable": trainable, "device": str(setup.device),
               "amp": cfg.amp, "data_fingerprint": train.fingerprint(), "config": C.to_dict(cfg)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _stats_dict(stats: DataStats) -> dict:
    d = asdict(stats)
    d["box_size_quantiles"] = list(d["box_size_quantiles"])
    return d


def _model_file(model, cfg: TrainConfig, train: DecodedDataset, setup: Setup, epoch: int, value: float,
                score_threshold: float) -> dict:
    """What `model.pt` holds: the weights of the epoch validation chose (no optimizer), the
    configuration as data, what rebuilding needs, which epoch it is with its validation value, and
    its operating threshold (the score that maximised F1 on validation at that epoch; nan: none did)."""
    return {"model": model.state_dict(), "config": C.to_dict(cfg), **_classes(train),
            "stats": _stats_dict(setup.stats), "image_scale": setup.image_scale,
            "epoch": epoch, "metric": cfg.metric, "value": value, "score_threshold": score_threshold}


def _classes(train: DecodedDataset) -> dict:
    """The class names and the training file's category ids, in label order."""
    return {"class_names": list(train.class_names), "category_ids": [c["id"] for c in train.categories()]}
