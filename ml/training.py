"""Training UnifiedPatchTST: the recipe, and the loop with early stopping and temperature calibration.

One run: AdamW (decay on matrices only) with a linear warm-up and cosine decay, bf16 autocast where
the hardware has it, gradient clipping, an exponential moving average of the weights, early
stopping on the averaged weights' validation IC at 1 h (or their validation loss, ml/losses.py;
``recipe.early_stopping``), then the temperatures. Everything random draws from ``recipe.seed``
and deterministic algorithms are on.

Each epoch draws ``samples_per_epoch`` training samples as whole cross-sections (all symbols of a
few anchor times) so the returns loss can ignore the move all symbols share at a time
(docs/MODEL.md explains why that matters more than anything else here).

The network learns from the real labels: the returns head from the market-neutral forward returns,
the direction head from the market-neutral classes (ml/dataset.py). With ``model.linear_path`` (the
default) the closed-form linear fit of ml/teacher.py is loaded into the model's linear path and
frozen before the first step, and epoch 0 (that linear model alone) is validated like every epoch,
so the stored model is the linear fit plus whatever the transformer's epochs added on validation.
The linear fit can also be mixed into the targets as a regulariser (``distill_returns``,
``distill_direction``, chosen by pilot runs over ``distill_candidates``); the default recipe does
not (weights 0), the recipe's values are stored and reported with every version.

Temperatures are not trained with the network (they would only rescale the logits the
cross-entropy already sets): after early stopping restores the best epoch, one ``log T`` per
horizon is fitted on the validation samples by minimising the plain (unweighted) negative
log-likelihood of that horizon's classes, so that confidences are calibrated probabilities on data
the weights never saw. The horizons need different temperatures (a 12 h class is far less
predictable than a 15 min one); they live in the network (``horizon_log_temperature``).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ml.dataset import Dataset, DatasetError, DatasetSpec
from ml.evaluation import ic_per_time, predict_outputs
from ml.losses import TargetStats, fit_log_temperature, loss_terms, target_stats, targets
from ml.model.config import DIRECTION_CLASSES, ModelConfig
from ml.model.network import UnifiedPatchTST, build_model
from ml.progress import NullProgress, Progress
from ml.teacher import LinearTeacher, fit_teacher


class LossWeights(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    returns: float = Field(1.0, ge=0.0)
    direction: float = Field(1.0, ge=0.0)
    risk: float = Field(0.5, ge=0.0)


class TrainingRecipe(BaseModel):
    """Everything that decides a training run besides the data; stored in ``training.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # "default" (the full recipe) or "quick" (the first-run recipe): stored with every version.
    name: str = "default"
    model: ModelConfig = ModelConfig(linear_path=True, direction_labels="tercile")
    days: float = Field(56.0, gt=0)
    symbols: int = Field(50, ge=1)
    phases: tuple[int, ...] = (0,)
    # 56 days: 60 % training, 25 % validation, 15 % test, with an 86-hour purge gap after training
    # and after validation. Validation then spans more than a week (10.4 days), so the temperatures
    # are fitted on weekdays and a weekend alike; a two-day validation period that fell on a weekend
    # (calm, 56 % FLAT against 36 % on the held-out month) mis-set them (docs/MODEL.md).
    train_fraction: float = Field(0.60, gt=0, lt=1)
    val_fraction: float = Field(0.25, gt=0, lt=1)
    purge_bars: int | None = Field(None, ge=0)
    epochs: int = Field(6, ge=1)
    samples_per_epoch: int = Field(16_384, ge=1)
    batch_size: int = Field(256, ge=1)
    val_max_samples: int = Field(4_096, ge=1)
    # The temperatures are fitted on up to this many validation samples (whole cross-sections drawn
    # across the validation period): the per-epoch sample above is too small and too clustered in
    # time to pin four temperatures (docs/MODEL.md, "Calibration per horizon").
    calibration_max_samples: int = Field(24_576, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    patience: int = Field(2, ge=1)
    # What early stopping (and the choice of the best epoch) watches: "val_loss", the total
    # validation loss, or "val_ic", the validation IC of the returns head at 1 h. With the linear
    # path the candidates start at epoch 0 (the linear fit alone), so the transformer's epochs are
    # kept only when they rank the next hour better than the linear model does. The validation
    # loss kept epochs that improved the risk head while the returns head lost IC (docs/MODEL.md).
    early_stopping: Literal["val_ic", "val_loss"] = "val_ic"
    # "neutral": the returns target is the return minus the mean over the symbols at the same
    # anchor time (the market move nobody can predict removed); "raw": the return itself.
    returns_target: Literal["raw", "neutral"] = "neutral"
    # Winsorise return and risk targets at this many training standard deviations: the simulator's
    # (and the market's) fat tails otherwise dominate the squared errors.
    target_clip_sd: float = Field(4.0, gt=0)
    # Exponential moving average of the weights (per step); validation, early stopping and the
    # stored model use the averaged weights. 0 disables it.
    ema_decay: float = Field(0.99, ge=0, lt=1)
    # Batches of whole cross-sections (all symbols at a few anchor times) and a returns loss that
    # ignores each cross-section's mean: the model is neither rewarded nor punished for the market
    # move every symbol shares, which it cannot predict but can memorise (docs/MODEL.md).
    cross_sectional: bool = True
    mixed_precision: Literal["auto", "off", "bf16"] = "auto"
    # Distillation from a linear teacher fitted on the training samples (ml/teacher.py): the share
    # of the teacher's prediction in the returns target and of its class probabilities in the
    # direction loss. 0 and 0 (the default) train on the labels alone.
    distill_returns: float = Field(0.0, ge=0, le=1)
    distill_direction: float = Field(0.0, ge=0, le=1)
    # The teacher's weight chosen on validation: for each candidate (used for both heads) a pilot
    # run of ``distill_pilot_samples`` (at most an epoch) from the same initial weights; the
    # candidate with the best validation IC at 1 h wins and the full run uses it (the chosen weight
    # and every pilot's IC are stored with the version). Empty: the recipe's distill_* as given.
    distill_candidates: tuple[float, ...] = ()
    distill_pilot_samples: int = Field(16_384, ge=1)
    teacher_ridge: float = Field(1e4, ge=0)
    teacher_l2: float = Field(1e3, ge=0)
    focal_gamma: float = Field(1.0, ge=0)
    class_weight_power: float = Field(0.5, ge=0)
    loss_weights: LossWeights = LossWeights()
    seed: int = 7

    def dataset_spec(self) -> DatasetSpec:
        return DatasetSpec(
            bar_minutes=self.model.bar_minutes,
            phases=self.phases,
            train_fraction=self.train_fraction,
            val_fraction=self.val_fraction,
            purge_bars=self.purge_bars,
        )


# The first-run recipe: a champion within about a minute of a fresh install, so `make run` shows
# signals at once; the default recipe is then trained in the background and replaces it only if it
# is better (ml/bootstrap.py). Its linear path already carries the closed-form fit, so one short
# epoch is enough for a model that ranks like the ridge regression from its first minute.
# The purge gaps (86 h each) and the features' warm-up take about 10 of its 24 days, so its split
# gives validation and test a quarter each, the training half 10 days.
QUICK_RECIPE = TrainingRecipe(
    name="quick",
    days=24.0,
    train_fraction=0.5,
    val_fraction=0.25,
    epochs=1,
    samples_per_epoch=4_096,
    calibration_max_samples=4_096,
)


@dataclass
class FitResult:
    model: UnifiedPatchTST
    history: list[dict[str, float]]
    best_epoch: int
    stats: TargetStats
    seconds: float
    samples_seen: int
    stopped_early: bool
    extra: dict[str, Any] = field(default_factory=dict)
    recipe: TrainingRecipe | None = None  # as trained: with the teacher weight the pilots chose
    teacher: LinearTeacher | None = None  # the linear teacher, when the run fitted one


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Decay matrices only; norms, biases and RevIN's affine vectors stay undecayed.
    decay: list[nn.Parameter] = []
    keep: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if name == "log_temperature" or not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else keep).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def fit(
    ds: Dataset,
    recipe: TrainingRecipe,
    device: torch.device,
    progress: Progress | None = None,
) -> FitResult:
    progress = progress or NullProgress()
    began = time.perf_counter()
    seed_everything(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    previous_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _fit(ds, recipe, device, progress, rng, began)
    finally:
        torch.use_deterministic_algorithms(previous_det)


def _time_groups(times: npt.NDArray[np.int64]) -> list[npt.NDArray[np.int64]]:
    """Positions of ``times`` grouped by equal value (one cross-section per anchor time)."""
    order = np.argsort(times, kind="stable")
    cuts = np.flatnonzero(np.diff(times[order])) + 1
    return np.split(order, cuts)


def _pick_groups(
    idx: npt.NDArray[np.int64], groups: list[npt.NDArray[np.int64]], n: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """About ``n`` samples of ``idx`` made of whole cross-sections drawn at random, kept together."""
    out: list[npt.NDArray[np.int64]] = []
    total = 0
    for g in rng.permutation(len(groups)):
        if total >= n:
            break
        out.append(idx[groups[g]])
        total += groups[g].shape[0]
    return np.concatenate(out)[:n]


def autocast_dtype(recipe: TrainingRecipe, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware does bf16 natively (CUDA, or AVX-512 BF16 / AMX CPUs)."""
    if recipe.mixed_precision == "off":
        return None
    if recipe.mixed_precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    native = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
    return torch.bfloat16 if native else None


def _group_ids(ds: Dataset, batch: npt.NDArray[np.int64], device: torch.device) -> torch.Tensor:
    _, inverse = np.unique(ds.anchor_ms[batch], return_inverse=True)
    return torch.from_numpy(inverse.astype(np.int64)).to(device)


def _returns_groups(
    recipe: TrainingRecipe, ds: Dataset, batch: npt.NDArray[np.int64], device: torch.device
) -> torch.Tensor | None:
    """The cross-sections whose shared move the returns loss ignores: only for raw return targets.
    A neutral target has no shared move left; ignoring the mean there would leave the level of the
    predicted returns free, and decoding compares that level with the trading costs."""
    if recipe.cross_sectional and recipe.returns_target == "raw":
        return _group_ids(ds, batch, device)
    return None


@dataclass
class _Teaching:
    """The teacher's targets for every training sample, by position in ``train_idx``."""

    train_idx: npt.NDArray[np.int64]
    returns: npt.NDArray[np.float64]  # [n, H] scaled
    probs: npt.NDArray[np.float64]  # [n, H, 3]
    return_var: torch.Tensor

    def position(self, batch: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return np.searchsorted(self.train_idx, batch)


@dataclass
class TeacherCache:
    """The linear teacher, fitted once per training run (pilots included), and its predictions for
    the training samples; the fitted teacher is also the ridge/logistic baseline (ml/baselines.py)."""

    teacher: LinearTeacher | None = None
    returns: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty((0, 0)))
    probs: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty((0, 0, 0)))


def _fit_teacher(
    ds: Dataset,
    train_idx: npt.NDArray[np.int64],
    recipe: TrainingRecipe,
    stats: TargetStats,
    progress: Progress,
    cache: TeacherCache,
) -> LinearTeacher:
    """The run's linear fit on the training samples (once per run: pilots share it)."""
    if cache.teacher is None:
        ret, _, _ = targets(ds, train_idx, recipe, stats)
        progress.start("linear fit (ridge, logistic)", 1)
        cache.teacher, t_ret, t_probs = fit_teacher(
            ds,
            train_idx,
            ret.astype(np.float64),
            eps=recipe.model.revin_eps,
            ridge=recipe.teacher_ridge,
            l2=recipe.teacher_l2,
        )
        cache.returns = np.clip(t_ret, -stats.return_clip, stats.return_clip)
        cache.probs = t_probs
        progress.update(1)
    return cache.teacher


def load_linear_path(model: UnifiedPatchTST, teacher: LinearTeacher) -> None:
    """Set the model's linear path to the closed-form fit and freeze it: the transformer trains
    on the residual of the best linear model of the training rows, not on a fit it could undo."""
    if model.linear is None:
        return
    model.linear.load_fit(
        torch.from_numpy(teacher.returns_coef).float(),
        torch.from_numpy(teacher.direction_coef).float(),
        torch.from_numpy(teacher.direction_mean).float(),
        torch.from_numpy(teacher.direction_scale).float(),
    )
    model.linear.requires_grad_(False)


def _distils(recipe: TrainingRecipe) -> bool:
    return recipe.distill_returns > 0 or recipe.distill_direction > 0


def _teach(
    ds: Dataset, idx: npt.NDArray[np.int64], recipe: TrainingRecipe, stats: TargetStats, cache: TeacherCache
) -> _Teaching | None:
    """The distillation targets from the fitted linear teacher in ``cache`` (None without distillation)."""
    if not _distils(recipe):
        return None
    ret, _, _ = targets(ds, idx, recipe, stats)
    t_ret, t_probs = cache.returns, cache.probs
    mixed = recipe.distill_returns * t_ret + (1 - recipe.distill_returns) * ret
    return _Teaching(
        train_idx=idx,
        returns=t_ret,
        probs=t_probs,
        return_var=torch.tensor(np.maximum(mixed.var(axis=0), 1e-8), dtype=torch.float32),
    )


@dataclass
class _Run:
    """What one training run works with: the samples, the networks, the optimiser, the normalisers."""

    ds: Dataset
    recipe: TrainingRecipe
    device: torch.device
    progress: Progress
    rng: np.random.Generator
    train_idx: npt.NDArray[np.int64]
    train_groups: list[npt.NDArray[np.int64]]  # one cross-section (anchor time) each
    val_idx: npt.NDArray[np.int64]
    calibration_idx: npt.NDArray[np.int64]  # the validation samples the temperatures are fitted on
    model: UnifiedPatchTST
    ema: UnifiedPatchTST  # the averaged weights (``model`` itself without averaging)
    stats: TargetStats  # the label normalisers: validation and the stored model
    fit_stats: TargetStats  # the normalisers of the targets the training loss fits
    teach: _Teaching | None
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    amp: torch.dtype | None
    per_epoch: int  # training samples drawn per epoch
    steps_per_epoch: int
    seen: int = 0  # training samples stepped on so far


def _prepare(
    ds: Dataset,
    recipe: TrainingRecipe,
    device: torch.device,
    progress: Progress,
    rng: np.random.Generator,
    cache: TeacherCache,
) -> _Run:
    """Data preparation and set-up: the split's samples, the network (and its average), the target
    normalisers, the teacher's targets, the optimiser and its schedule."""
    train_idx = ds.indices("train")
    val_all = ds.indices("val")
    if train_idx.size == 0 or val_all.size == 0:
        raise DatasetError(
            f"need training and validation samples, got {train_idx.size} and {val_all.size}: "
            "load more days of history"
        )
    train_groups = _time_groups(ds.anchor_ms[train_idx])
    val_groups = _time_groups(ds.anchor_ms[val_all])
    val_idx = np.sort(_pick_groups(val_all, val_groups, recipe.val_max_samples, rng))
    calibration_idx = np.sort(_pick_groups(val_all, val_groups, recipe.calibration_max_samples, rng))
    model = build_model(recipe.model)
    stats = target_stats(ds, train_idx, recipe)
    if recipe.model.linear_path or _distils(recipe):
        load_linear_path(model, _fit_teacher(ds, train_idx, recipe, stats, progress, cache))
    model = model.to(device)
    ema = copy.deepcopy(model) if recipe.ema_decay > 0 else model
    teach = _teach(ds, train_idx, recipe, stats, cache)
    # The training loss is normalised by the variance of the targets it actually fits (teacher
    # predictions vary far less than realised returns); validation keeps the label normalisers.
    fit_stats = stats if teach is None else replace(stats, return_var=teach.return_var)
    optimizer = torch.optim.AdamW(_param_groups(model, recipe.weight_decay), lr=recipe.learning_rate)
    per_epoch = min(recipe.samples_per_epoch, train_idx.size)
    steps_per_epoch = -(-per_epoch // recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    warmup = max(1, int(recipe.warmup_fraction * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _schedule(step, total_steps, warmup)
    )
    return _Run(
        ds=ds,
        recipe=recipe,
        device=device,
        progress=progress,
        rng=rng,
        train_idx=train_idx,
        train_groups=train_groups,
        val_idx=val_idx,
        calibration_idx=calibration_idx,
        model=model,
        ema=ema,
        stats=stats.to(device),
        fit_stats=fit_stats.to(device),
        teach=teach,
        optimizer=optimizer,
        scheduler=scheduler,
        amp=autocast_dtype(recipe, device),
        per_epoch=per_epoch,
        steps_per_epoch=steps_per_epoch,
    )


def _batch_targets(
    run: _Run, batch: npt.NDArray[np.int64]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Returns, classes and risk of ``batch`` on the device; with a teacher, the returns are mixed
    with its predictions and its class probabilities come as the soft direction targets."""
    recipe, device = run.recipe, run.device
    ret, cls, risk = (torch.from_numpy(a).to(device) for a in targets(run.ds, batch, recipe, run.stats))
    soft = None
    if run.teach is not None:
        pos = run.teach.position(batch)
        mixed = (
            recipe.distill_returns * run.teach.returns[pos] + (1 - recipe.distill_returns) * ret.cpu().numpy()
        )
        ret = torch.from_numpy(mixed.astype(np.float32)).to(device)
        soft = torch.from_numpy(run.teach.probs[pos].astype(np.float32)).to(device)
    return ret, cls, risk, soft


def _average_weights(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """One step of the exponential moving average of the weights (nothing without averaging)."""
    if ema is model:
        return
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
            p_ema.lerp_(p, 1.0 - decay)


def _train_step(run: _Run, batch: npt.NDArray[np.int64]) -> float:
    """One optimiser step on ``batch``; returns its training loss."""
    recipe, device = run.recipe, run.device
    xb = torch.from_numpy(run.ds.windows(batch)).to(device)
    ret, cls, risk, soft = _batch_targets(run, batch)
    groups = _returns_groups(recipe, run.ds, batch, device)
    with torch.autocast(device.type, dtype=run.amp or torch.float32, enabled=run.amp is not None):
        out = run.model(xb)
    l_ret, l_dir, l_risk = loss_terms(
        out.float(),
        ret,
        cls,
        risk,
        run.fit_stats,
        recipe.focal_gamma,
        groups,
        soft,
        recipe.distill_direction,
    )
    w = recipe.loss_weights
    loss = w.returns * l_ret + w.direction * l_dir + w.risk * l_risk
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(run.model.parameters(), recipe.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    _average_weights(run.ema, run.model, recipe.ema_decay)
    run.seen += int(batch.shape[0])
    return float(loss.item())


def _train_epoch(run: _Run, epoch: int, label: str | None = None) -> float:
    """One epoch on freshly drawn training samples; returns the smoothed training loss."""
    recipe = run.recipe
    run.model.train()
    if recipe.cross_sectional:
        pick = _pick_groups(run.train_idx, run.train_groups, run.per_epoch, run.rng)
    else:
        pick = run.rng.choice(run.train_idx, run.per_epoch, replace=False)
    run.progress.start(label or f"epoch {epoch}/{recipe.epochs}", run.steps_per_epoch)
    running = 0.0
    for step in range(run.steps_per_epoch):
        loss = _train_step(run, pick[step * recipe.batch_size : (step + 1) * recipe.batch_size])
        running = loss if step == 0 else 0.95 * running + 0.05 * loss
        run.progress.update(step + 1, loss=running)
    return running


def _validate_epoch(run: _Run, epoch: int, train_loss: float) -> dict[str, float]:
    """The averaged weights' validation metrics after ``epoch``, reported to the progress."""
    metrics = validate(run.ema, run.ds, run.val_idx, run.recipe, run.stats, run.device)
    metrics["epoch"] = float(epoch)
    metrics["train_loss"] = train_loss
    progress = run.progress
    if hasattr(progress, "metrics"):
        progress.metrics(metrics)
    trained = "the linear path alone" if epoch == 0 else f"train loss {train_loss:.4f}"
    progress.note(
        f"epoch {epoch}: {trained}, val loss {metrics['val_loss']:.4f}, "
        f"val acc 15m {metrics['val_acc_h1']:.3f} (majority {metrics['val_majority_h1']:.3f}), "
        f"val IC 15m {metrics['val_ic_h1']:+.4f}, 1h {metrics['val_ic_h4']:+.4f}"
    )
    return metrics


@dataclass
class _EarlyStopping:
    """Early stopping on a validation score (lower is better), with a checkpoint of the best epoch's
    weights."""

    patience: int
    best_score: float = math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0

    def should_stop(self, epoch: int, score: float, model: nn.Module) -> bool:
        """Record ``epoch``: a new best keeps a copy of ``model``'s weights; True once ``patience``
        epochs in a row brought no improvement."""
        if self.best_state is None or score < self.best_score - 1e-5:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights into ``model``."""
        assert self.best_state is not None  # the first epoch is always kept
        model.load_state_dict(self.best_state)


def _fit(
    ds: Dataset,
    recipe: TrainingRecipe,
    device: torch.device,
    progress: Progress,
    rng: np.random.Generator,
    began: float,
) -> FitResult:
    cache = TeacherCache()
    recipe, chosen = _choose_distillation(ds, recipe, device, progress, cache)
    seed_everything(recipe.seed)
    run = _prepare(ds, recipe, device, progress, rng, cache)
    history: list[dict[str, float]] = []
    stopping = _EarlyStopping(recipe.patience)
    stopped_early = False
    if run.model.linear is not None:
        # Epoch 0, the linear path alone, is a candidate too: training keeps the transformer's
        # contribution only where validation says it helps.
        metrics = _validate_epoch(run, 0, math.nan)
        history.append(metrics)
        stopping.should_stop(0, _stopping_score(recipe, metrics), run.ema)
    for epoch in range(1, recipe.epochs + 1):
        metrics = _validate_epoch(run, epoch, _train_epoch(run, epoch))
        history.append(metrics)
        if stopping.should_stop(epoch, _stopping_score(recipe, metrics), run.ema):
            stopped_early = epoch < recipe.epochs
            break
    stopping.restore(run.model)
    temperatures = calibrate_temperature(run.model, ds, run.calibration_idx, device)
    shown = " / ".join(f"{t:.2f}" for t in temperatures)
    progress.note(
        f"best epoch {stopping.best_epoch} ({recipe.early_stopping} {abs(stopping.best_score):.4f}); "
        f"temperatures {shown}"
    )
    return FitResult(
        model=run.model,
        history=history,
        best_epoch=stopping.best_epoch,
        stats=run.stats,
        seconds=time.perf_counter() - began,
        samples_seen=run.seen,
        stopped_early=stopped_early,
        extra={"temperatures": list(temperatures), **chosen},
        recipe=recipe,
        teacher=cache.teacher,
    )


# The horizon (bars) whose validation IC chooses the teacher's weight and the best epoch: 1 h, the
# default decoding's primary horizon.
SELECTION_HORIZON = 4


def _stopping_score(recipe: TrainingRecipe, metrics: dict[str, float]) -> float:
    """Lower is better: the validation loss, or minus the validation IC at 1 h (NaN counts as none)."""
    if recipe.early_stopping == "val_loss":
        return metrics["val_loss"]
    ic = metrics.get(f"val_ic_h{SELECTION_HORIZON}", float("nan"))
    return -ic if math.isfinite(ic) else math.inf


def _choose_distillation(
    ds: Dataset, recipe: TrainingRecipe, device: torch.device, progress: Progress, cache: TeacherCache
) -> tuple[TrainingRecipe, dict[str, Any]]:
    """The recipe with the teacher weight that the pilot runs chose, and what they measured."""
    if not recipe.distill_candidates:
        return recipe, {}
    scores: dict[float, float] = {}
    for weight in recipe.distill_candidates:
        pilot = recipe.model_copy(
            update={
                "distill_returns": weight,
                "distill_direction": weight,
                "distill_candidates": (),
                "epochs": 1,
                "samples_per_epoch": min(recipe.distill_pilot_samples, recipe.samples_per_epoch),
            }
        )
        seed_everything(recipe.seed)
        run = _prepare(ds, pilot, device, progress, np.random.default_rng(recipe.seed), cache)
        _train_epoch(run, 1, label=f"pilot, teacher weight {weight:g}")
        metrics = validate(run.ema, ds, run.val_idx, pilot, run.stats, device)
        ic = metrics.get(f"val_ic_h{SELECTION_HORIZON}", float("nan"))
        scores[weight] = ic if math.isfinite(ic) else -math.inf
    best = max(scores, key=lambda w: scores[w])  # the first of equals: candidates are in order
    shown = ", ".join(f"{w:g}: {v:+.4f}" for w, v in scores.items())
    progress.note(f"teacher weight {best:g} chosen on validation IC at 1 h ({shown})")
    chosen = recipe.model_copy(update={"distill_returns": best, "distill_direction": best})
    return chosen, {"distill_weight": best, "distill_pilot_val_ic": {f"{w:g}": v for w, v in scores.items()}}


def _outputs(
    model: UnifiedPatchTST, ds: Dataset, idx: npt.NDArray[np.int64], device: torch.device
) -> torch.Tensor:
    """The model's float32 outputs for ``idx`` on ``device`` (the evaluation's batched forward)."""
    return torch.from_numpy(predict_outputs(model, ds, idx, device)).float().to(device)


def validate(
    model: UnifiedPatchTST,
    ds: Dataset,
    idx: npt.NDArray[np.int64],
    recipe: TrainingRecipe,
    stats: TargetStats,
    device: torch.device,
) -> dict[str, float]:
    out = _outputs(model, ds, idx, device)
    ret, cls, risk = (torch.from_numpy(a).to(device) for a in targets(ds, idx, recipe, stats))
    groups = _returns_groups(recipe, ds, idx, device)
    l_ret, l_dir, l_risk = loss_terms(out, ret, cls, risk, stats, recipe.focal_gamma, groups)
    w = recipe.loss_weights
    metrics = {
        "val_loss": float(w.returns * l_ret + w.direction * l_dir + w.risk * l_risk),
        "val_loss_returns": float(l_ret),
        "val_loss_direction": float(l_dir),
        "val_loss_risk": float(l_risk),
    }
    n_h = recipe.model.n_horizons
    out_np = out.float().cpu().numpy()
    pred = out_np[:, n_h : n_h * 4].reshape(-1, n_h, len(DIRECTION_CLASSES)).argmax(-1)
    true = ds.classes[idx]
    for h, bars in enumerate(recipe.model.horizons):
        metrics[f"val_acc_h{bars}"] = float((pred[:, h] == true[:, h]).mean())
        metrics[f"val_majority_h{bars}"] = float(np.bincount(true[:, h]).max() / true.shape[0])
        metrics[f"val_ic_h{bars}"] = ic_per_time(out_np[:, h], ds.returns[idx, h], ds.anchor_ms[idx])[0]
    return metrics


def calibrate_temperature(
    model: UnifiedPatchTST, ds: Dataset, idx: npt.NDArray[np.int64], device: torch.device
) -> tuple[float, ...]:
    """Fit one temperature per horizon on the validation samples ``idx`` into
    ``model.horizon_log_temperature`` (the scalar temperature is reset to 1); returns them."""
    n_h = model.config.n_horizons
    n_c = len(DIRECTION_CLASSES)
    with torch.no_grad():
        model.horizon_log_temperature.zero_()
        model.log_temperature.zero_()
    logits = _outputs(model, ds, idx, device)[:, n_h : n_h + n_h * n_c].cpu().reshape(-1, n_h, n_c)
    labels = torch.from_numpy(ds.classes[idx])
    log_t = [fit_log_temperature(logits[:, h : h + 1], labels[:, h : h + 1]) for h in range(n_h)]
    with torch.no_grad():
        model.horizon_log_temperature.copy_(torch.tensor(log_t, dtype=torch.float32))
    return tuple(math.exp(v) for v in log_t)
