"""Knowledge distillation from an original model (teacher) into its converted twin (student).

The loss on each batch (Hinton et al., 2015) is

    alpha * T^2 * KL(softmax(t / T) || softmax(s / T))  +  (1 - alpha) * CE(s, y)
    + feature_weight * mean over paths P of MSE(student.P(x), teacher.P(x))

with ``s``/``t`` the student's/teacher's logits, ``T`` the temperature (the ``T^2`` keeps the
soft term's gradients on the scale of the hard one) and optional intermediate feature
matching at named module paths, typically the converted layers, whose outputs have the same
shape in both models.

:func:`distill` runs in one process and, unchanged, under ``torchrun`` with
DistributedDataParallel and a DistributedSampler: it reads ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK`` (see :mod:`leanconv.train.distributed`), only rank 0 shows progress, and every
rank ends with the same weights. ``python -m leanconv.train`` is a command-line entry point
for torchrun.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, TensorDataset

from leanconv._modes import evaluating
from leanconv.data.batches import FORMS, check_batch, first_input, label_of
from leanconv._validate import check_positive_int, torch_device
from leanconv.train.distributed import DistInfo, setup, teardown

DEFAULT_ALPHA = 0.5
"""The default weight of the teacher's soft targets against the labels, for :func:`distill`,
:func:`distill_loss` and :func:`leanconv.optimize`. Measured on the demo's setting (the digits
CNN as rank-1 depthwise separable convs, refit, then 3 epochs), 3 seeds: mean test accuracy
97.68% with 0.5, 97.31% with 0.7, 97.21% with 0.9 at lr 3e-3 (the demo's), 97.31% / 96.94% /
96.94% at lr 1e-3 (the default); 0.5 was at least as good as 0.9 in all 6 runs, by 0 to 3 of
359 test images (``benchmarks/distill_alpha.py``; the table is in ``docs/train.md``)."""


class LossParts(NamedTuple):
    """The distillation loss of one batch and its parts (``hard`` is 0 without labels)."""

    total: torch.Tensor
    soft: torch.Tensor
    hard: torch.Tensor


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: Optional[torch.Tensor] = None,
    temperature: float = 4.0,
    alpha: float = DEFAULT_ALPHA,
) -> LossParts:
    """``alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * CE(student, y)``.

    The KL divergence is averaged over the batch (``batchmean``, the true KL per sample).
    ``targets=None`` (unlabelled data) needs ``alpha=1``.
    """
    _check_loss_args(temperature, alpha)
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must both be (N, classes)")
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    soft = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature ** 2
    if targets is None:
        if alpha != 1.0:
            raise ValueError(f"alpha={alpha!r} weighs a hard-label loss but the data has no labels: use alpha=1")
        hard = soft.new_zeros(())
    else:
        hard = F.cross_entropy(student_logits, targets)
    return LossParts(alpha * soft + (1 - alpha) * hard, soft, hard)


def _check_loss_args(temperature: float, alpha: float) -> None:
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature={temperature!r} must be a finite number > 0")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha={alpha!r} must be in [0, 1] (the weight of the soft, teacher-matching term)")


@dataclass
class EpochStats:
    """Mean losses over one epoch's samples, across every process."""

    epoch: int
    loss: float
    soft: float
    hard: float
    feature: float
    samples: int
    steps: int


@dataclass
class DistillResult:
    """What a :func:`distill` run did: per-epoch means and this process's per-step losses."""

    epochs: List[EpochStats] = field(default_factory=list)
    step_losses: List[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    world_size: int = 1
    feature_paths: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict:
        return asdict(self)

    def to_markdown(self) -> str:
        """One row per epoch: loss and its parts, samples, steps."""
        lines = [f"Distillation: {self.steps} steps in {self.seconds:.1f} s on {self.world_size} process(es)"
                 + (f", features matched at {', '.join(self.feature_paths)}" if self.feature_paths else ""), "",
                 "| epoch | loss | soft (KL x T^2) | hard (CE) | feature (MSE) | samples | steps |",
                 "|---:|---:|---:|---:|---:|---:|---:|"]
        for e in self.epochs:
            lines.append(f"| {e.epoch} | {e.loss:.4f} | {e.soft:.4f} | {e.hard:.4f} | {e.feature:.4f} | "
                         f"{e.samples} | {e.steps} |")
        return "\n".join(lines) + "\n"


DataArg = Any  # any form of leanconv.data.batches (docs/data.md)


def _split_batch(batch: Any, index: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The checked input and the labels (None without) of one loader batch."""
    return check_batch(first_input(batch, "data", index), "data", index), label_of(batch, "data", index)


def _is_dataset(data: Any) -> bool:
    """A map-style dataset: indexable with a length (a list of samples too), not a tensor or dict."""
    return (hasattr(data, "__len__") and hasattr(data, "__getitem__")
            and not isinstance(data, (torch.Tensor, dict, str, bytes)))


def _as_items(data: Any) -> Any:
    """``data`` as a Dataset of samples or a list of batches: a tensor becomes a dataset of its
    samples; any other iterable (a generator too) is read once into a list."""
    if isinstance(data, torch.Tensor):
        return TensorDataset(check_batch(data, "data", 0))
    if isinstance(data, (str, bytes, dict)) or data is None:
        raise ValueError(f"data={data!r} is not training data; expected {FORMS}")
    if _is_dataset(data) and not isinstance(data, (list, tuple)):
        return data
    try:
        items = list(data)
    except TypeError:
        raise ValueError(f"data is a {type(data).__name__}; expected {FORMS}") from None
    if not items:
        raise ValueError("data is empty: it must hold at least one sample")
    first = first_input(items[0], "data", 0)
    if first.dim() not in (3, 4):
        raise ValueError(f"data: item 0 has shape {tuple(first.shape)}; an input must be a sample (C, H, W) "
                         "or a batch (N, C, H, W)")
    return items if first.dim() == 4 else _Samples(items)


class _Samples(Dataset):
    """A list of single samples as a map-style dataset (shuffled and batched like any dataset)."""

    def __init__(self, items: List[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


def _loader(data: DataArg, info: DistInfo, batch_size: int, seed: int, num_workers: int):
    """What to iterate each epoch, and its sampler: a given DataLoader as it is; a list of batches
    in order; a dataset of samples in a DataLoader, sharded by a DistributedSampler when
    distributed, shuffled by a seeded sampler otherwise."""
    if isinstance(data, DataLoader):
        if info.distributed and not isinstance(data.sampler, DistributedSampler):
            raise ValueError("data is a DataLoader without a DistributedSampler in a distributed run: pass the "
                             "Dataset (leanconv shards it) or a DataLoader with a DistributedSampler")
        return data, data.sampler
    data = _as_items(data)
    if isinstance(data, list):
        if info.distributed:
            raise ValueError("data is a list of batches in a distributed run: pass a Dataset (leanconv shards it) "
                             "or a DataLoader with a DistributedSampler")
        return data, None
    if len(data) == 0:
        raise ValueError("data is empty: it must hold at least one sample")
    if info.distributed:
        sampler = DistributedSampler(data, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed)
    else:
        sampler = RandomSampler(data, generator=torch.Generator().manual_seed(seed))
    return DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=num_workers), sampler


def _resolve_paths(student: nn.Module, teacher: nn.Module, paths: Optional[Sequence[str]]) -> List[str]:
    if paths is None:
        return []
    if isinstance(paths, str):
        raise ValueError(f"feature_paths={paths!r} must be a list of module paths, not one string")
    for path in paths:
        for name, model in (("student", student), ("teacher", teacher)):
            try:
                model.get_submodule(path)
            except AttributeError:
                raise ValueError(f"feature_paths entry {path!r} is not a module of the {name}") from None
    return list(paths)


class _Capture:
    """Forward hooks that keep the latest output of each named module."""

    def __init__(self, model: nn.Module, paths: Sequence[str]) -> None:
        self.outputs: Dict[str, torch.Tensor] = {}
        self.handles = [model.get_submodule(p).register_forward_hook(self._hook(p)) for p in paths]

    def _hook(self, path: str):
        def hook(module, args, output):
            self.outputs[path] = output
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _feature_loss(student: _Capture, teacher: _Capture, paths: Sequence[str], reference: torch.Tensor) -> torch.Tensor:
    if not paths:
        return reference.new_zeros(())
    losses = []
    for path in paths:
        s, t = student.outputs[path], teacher.outputs[path]
        if s.shape != t.shape:
            raise ValueError(f"feature_paths entry {path!r}: student output {tuple(s.shape)} and teacher output "
                             f"{tuple(t.shape)} must have the same shape")
        losses.append(F.mse_loss(s, t))
    return torch.stack(losses).mean()


def _check_models(student: nn.Module, teacher: nn.Module) -> None:
    for name, model in (("student", student), ("teacher", teacher)):
        if not isinstance(model, nn.Module):
            raise ValueError(f"{name}={type(model).__name__} must be an nn.Module")
    if student is teacher:
        raise ValueError("student and teacher are the same module: distill into a converted copy")
    for name, model in (("student", student), ("teacher", teacher)):
        if any(p.is_meta for p in model.parameters()):
            raise ValueError(f"{name} has weights on the meta device (no values): load real weights before distilling")
    shared = {id(p) for p in teacher.parameters()} & {id(p) for p in student.parameters()}
    if shared:
        raise ValueError(f"student shares {len(shared)} parameter tensor(s) with the teacher: training would change "
                         "the teacher; pass a copy (leanconv.convert returns one)")
    if not any(p.requires_grad for p in student.parameters()):
        raise ValueError("student has no trainable parameters (requires_grad is False everywhere)")


def _sync_buffers(model: nn.Module, info: DistInfo) -> None:
    """Average floating buffers (BatchNorm running statistics) over the processes and take
    rank 0's integer buffers, so that every rank ends with the same state_dict (DDP keeps the
    parameters equal; each rank's last forward updated its own running statistics)."""
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(info.world_size)
        else:
            dist.broadcast(buffer, src=0)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: DataArg,
    epochs: int = 1,
    lr: float = 1e-3,
    *,
    temperature: float = 4.0,
    alpha: float = DEFAULT_ALPHA,
    feature_paths: Optional[Sequence[str]] = None,
    feature_weight: float = 1.0,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    max_steps: Optional[int] = None,
    seed: int = 0,
    device: Optional[Union[str, torch.device]] = None,
    num_workers: int = 0,
    progress: bool = True,
) -> DistillResult:
    """Train ``student`` **in place** to mimic ``teacher`` on ``data``; return the loss history.

    The student (usually ``leanconv.convert(teacher, ...).model``) is moved to ``device``
    (default: the device of its parameters; a CPU student under torchrun gets one GPU per
    process when there are any) and trained with Adam (``lr``, ``weight_decay``) in train mode and left in eval mode. The
    teacher is never changed: it runs in eval mode under ``no_grad`` (a copy when it must move
    to another device) and gets its former mode back.

    ``data``: any form of :mod:`leanconv.data.batches` (docs/data.md). A DataLoader is used as
    it is; a Dataset, a tensor or a list of single samples is shuffled (seeded) into batches of
    ``batch_size`` (per process); a list or iterable of batches is used in its order each
    epoch. Labels are the second item of ``(x, y, ...)`` or a dict's ``'label'``; data without
    them needs ``alpha=1`` (else one clear error at the first batch). ``alpha``: the weight of the
    teacher's soft targets against the labels (:data:`DEFAULT_ALPHA`, measured as its doc
    says). ``feature_paths``: module paths present in both models whose outputs are matched
    (MSE, weight ``feature_weight``). ``max_steps`` stops early (all epochs otherwise).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is started if needed (gloo on
    CPU, nccl on GPU), the student is wrapped in DistributedDataParallel, a Dataset is
    sharded by a DistributedSampler, only rank 0 shows progress, and BatchNorm running
    statistics are averaged over the ranks at the end so all ranks hold identical weights.
    """
    _check_models(student, teacher)
    _check_settings(epochs, lr, batch_size, max_steps, feature_weight, weight_decay, num_workers)
    _check_loss_args(temperature, alpha)
    paths = _resolve_paths(student, teacher, feature_paths)
    info = setup(_device_for(student, device))
    captures: List[_Capture] = []
    try:
        with evaluating(teacher):  # each of the teacher's modules gets its own flag back
            loader, sampler = _loader(data, info, batch_size, seed, num_workers)
            running_teacher = _place_models(student, teacher, info.device)
            captures = [_Capture(student, paths), _Capture(running_teacher, paths)]
            optimizer = torch.optim.Adam(student.parameters(), lr=lr, weight_decay=weight_decay)
            trainer = _Trainer(_wrap_for_ddp(student, info), running_teacher, optimizer, captures, paths,
                               temperature, alpha, feature_weight, info)
            return _train(trainer, student, loader, sampler, epochs, max_steps, progress)
    finally:
        for capture in captures:
            capture.remove()
        student.eval()
        teardown(info)


def _check_settings(epochs: int, lr: float, batch_size: int, max_steps: Optional[int], feature_weight: float,
                    weight_decay: float, num_workers: int = 0) -> None:
    """distill's numeric settings, each with its rule (the loss's own are in :func:`_check_loss_args`)."""
    check_positive_int(epochs, "epochs")
    check_positive_int(batch_size, "batch_size")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers={num_workers!r} must be an int >= 0")
    if max_steps is not None:
        check_positive_int(max_steps, "max_steps")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr={lr!r} must be a number > 0")
    if not (isinstance(feature_weight, (int, float)) and feature_weight >= 0):
        raise ValueError(f"feature_weight={feature_weight!r} must be >= 0")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"weight_decay={weight_decay!r} must be >= 0")


def _device_for(student: nn.Module, device: Optional[Union[str, torch.device]]) -> Optional[torch.device]:
    """The device asked for, else the one the student's parameters are on. Only a CPU student
    under torchrun gets None: :func:`leanconv.train.distributed.setup` then gives each process
    its own GPU when there are any. The meta device holds no weights to train: refused."""
    chosen = torch_device(device) if device is not None else next(student.parameters()).device
    if chosen.type == "meta":
        raise ValueError("device='meta' holds no values to train on: pass a real device such as 'cpu' or 'cuda'")
    if device is None and chosen.type == "cpu" and _launched_distributed():
        return None
    return chosen


def _launched_distributed() -> bool:
    """Whether this process is one of several (a process group, or torchrun's WORLD_SIZE > 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1")


def _place_models(student: nn.Module, teacher: nn.Module, device: torch.device) -> nn.Module:
    """Move the student to ``device`` in train mode; return the teacher to run, in eval mode on
    ``device`` (a copy when it has to move, so the caller's teacher is never changed)."""
    student.to(device)
    teacher_param = next(teacher.parameters(), None)
    if teacher_param is not None and teacher_param.device != device:
        teacher = copy.deepcopy(teacher).to(device)
    teacher.eval()
    student.train()
    return teacher


def _wrap_for_ddp(student: nn.Module, info: DistInfo) -> nn.Module:
    """The student itself in one process; wrapped in DistributedDataParallel under torchrun."""
    if not info.distributed:
        return student
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(student, device_ids=[info.device] if info.device.type == "cuda" else None)


@dataclass
class _Trainer:
    """One optimizer step of the distillation loss on one batch."""

    model: nn.Module  # the student, or its DistributedDataParallel wrapper
    teacher: nn.Module
    optimizer: torch.optim.Optimizer
    captures: List[_Capture]  # [student's, teacher's]
    paths: List[str]
    temperature: float
    alpha: float
    feature_weight: float
    info: DistInfo

    def step(self, batch: Any, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Train on ``batch`` (the ``index``-th); return the loss and the step's sums (loss, soft,
        hard, feature, each times the batch size, then the batch size and 1) for the epoch means."""
        x, y = _split_batch(batch, index)
        if y is None and self.alpha != 1.0:
            raise ValueError(f"data: batch {index} has no labels, but alpha={self.alpha!r} weighs a hard-label loss: "
                             "pass (input, label) items, or alpha=1 to learn from the teacher alone")
        x = x.to(self.info.device, non_blocking=True)
        y = y.to(self.info.device, non_blocking=True) if y is not None else None
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        student_logits = self.model(x)
        parts = distill_loss(student_logits, teacher_logits, y, self.temperature, self.alpha)
        feature = _feature_loss(self.captures[0], self.captures[1], self.paths, parts.total)
        loss = parts.total + self.feature_weight * feature
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        n = x.shape[0]
        sums = torch.tensor([loss.item() * n, parts.soft.item() * n, parts.hard.item() * n, feature.item() * n, n, 1],
                            dtype=torch.float64, device=self.info.device)
        return loss, sums


def _train(trainer: _Trainer, student: nn.Module, loader: DataLoader, sampler, epochs: int,
           max_steps: Optional[int], progress: bool) -> DistillResult:
    """Every epoch (or ``max_steps`` steps in all); then, under torchrun, the same BatchNorm
    statistics on every rank."""
    info = trainer.info
    total_steps = epochs * len(loader) if max_steps is None else min(max_steps, epochs * len(loader))
    result = DistillResult(world_size=info.world_size, feature_paths=trainer.paths)
    start = time.perf_counter()
    with _progress(progress and info.is_main, total_steps) as advance:
        for epoch in range(epochs):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            result.epochs.append(_train_epoch(trainer, loader, f"{epoch + 1}/{epochs}", total_steps, result, advance))
            if result.steps >= total_steps:
                break
    if info.distributed:
        _sync_buffers(student, info)
    result.seconds = time.perf_counter() - start
    return result


def _train_epoch(trainer: _Trainer, loader: DataLoader, epoch: str, total_steps: int, result: DistillResult,
                 advance: Callable[[str], None]) -> EpochStats:
    """One pass over ``loader`` (``epoch``: "n/of"), stopping at ``total_steps``; the epoch's means."""
    sums = torch.zeros(6, dtype=torch.float64, device=trainer.info.device)  # loss, soft, hard, feat, n, steps
    for batch in loader:
        if result.steps >= total_steps:
            break
        loss, step_sums = trainer.step(batch, result.steps)
        result.steps += 1
        result.step_losses.append(loss.item())
        sums += step_sums
        advance(f"epoch {epoch} loss {loss.item():.4f}")
    return _epoch_stats(len(result.epochs), sums, trainer.info)


def _epoch_stats(epoch: int, sums: torch.Tensor, info: DistInfo) -> EpochStats:
    """One epoch's means from this process's sums (added over every rank when distributed)."""
    if info.distributed:
        dist.all_reduce(sums)
        sums[5] /= info.world_size  # every rank takes the same number of steps
    count = max(sums[4].item(), 1.0)
    return EpochStats(epoch + 1, sums[0].item() / count, sums[1].item() / count, sums[2].item() / count,
                      sums[3].item() / count, int(sums[4].item()), int(sums[5].item()))


class _progress:
    """A rich progress bar on stderr (or nothing), used as ``with _progress(on, total) as advance``."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self.bar, self.task = enabled, total, None, None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("distill {task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True))
            self.bar.start()
            self.task = self.bar.add_task("", total=self.total)
        return self._advance

    def _advance(self, description: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=description)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


__all__ = ["DEFAULT_ALPHA", "DistillResult", "EpochStats", "LossParts", "distill", "distill_loss"]
