"""One data vocabulary for every entry point that runs a model on the user's data.

``convert(calib=...)``, ``refit``, ``quantize``, ``distill``, ``optimize`` and the deployment
targets all accept the same forms, read by :func:`input_batches`:

- one tensor ``(N, C, H, W)``: one batch (never iterated into 3-D samples);
- a list, tuple or any iterable (a ``DataLoader`` too) whose items are input batches
  ``(N, C, H, W)`` or single samples ``(C, H, W)`` (consecutive samples are stacked into
  batches of ``batch_size``);
- items that are ``(x, y, ...)`` tuples or lists (a ``DataLoader`` over a labelled dataset):
  the first element is the input;
- items that are dicts: the input is ``item[key]`` (``key`` given, else the first of
  :data:`INPUT_KEYS` present);
- a map-style ``Dataset`` (``__len__`` and ``__getitem__``): its samples, in order.

Where labels are needed (``distill`` with a hard-label term, ``evaluate``), they are the second
element of a tuple/list item, or ``item[label_key]`` of a dict (else the first of
:data:`LABEL_KEYS` present); :func:`labelled_batches` reads them with the inputs.

Everything else, and a batch of the wrong rank, dtype, channel count or with NaN/inf values,
is refused with one line naming the argument and the batch.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

INPUT_KEYS: Sequence[str] = ("input", "inputs", "image", "images", "x", "pixel_values")
LABEL_KEYS: Sequence[str] = ("label", "labels", "target", "targets", "y")
FORMS = ("an (N, C, H, W) tensor, a list/iterable/DataLoader of such batches or of (C, H, W) samples, "
         "(x, y, ...) tuples whose first item is the input, or dicts holding the input")


def first_input(item: Any, name: str, index: int, key: Optional[str] = None) -> torch.Tensor:
    """The input tensor of one item: the tensor itself, the first element of a tuple/list, or a dict's key."""
    if isinstance(item, torch.Tensor):
        return item
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        return item[0]
    if isinstance(item, dict):
        keys = [key] if key is not None else [k for k in INPUT_KEYS if k in item]
        if keys and keys[0] in item and isinstance(item[keys[0]], torch.Tensor):
            return item[keys[0]]
        wanted = repr(key) if key is not None else f"one of {list(INPUT_KEYS)}"
        raise ValueError(f"{name}: item {index} is a dict with keys {sorted(map(str, item))}; "
                         f"the input must be a tensor under {wanted} (pass key=... to name it)")
    raise ValueError(f"{name}: item {index} is a {type(item).__name__}; expected {FORMS}")


def _items(data: Any, name: str) -> Iterator[Any]:
    """The items of ``data``: a tensor is one item; a map-style dataset yields its samples."""
    if isinstance(data, torch.Tensor):
        return iter([data])
    if isinstance(data, (str, bytes)) or data is None:
        raise ValueError(f"{name}={data!r} is not data; expected {FORMS}")
    if isinstance(data, dict):
        return iter([data])
    if hasattr(data, "__len__") and hasattr(data, "__getitem__") and not isinstance(data, (list, tuple)):
        return (data[i] for i in range(len(data)))
    try:
        return iter(data)
    except TypeError:
        raise ValueError(f"{name} is a {type(data).__name__}; expected {FORMS}") from None


def check_batch(x: torch.Tensor, name: str, index: int, channels: Optional[int] = None,
                finite: bool = True) -> torch.Tensor:
    """``x`` as a checked input batch: 4-D, floating point, ``channels`` channels, finite."""
    if x.dim() != 4:
        raise ValueError(f"{name}: batch {index} has shape {tuple(x.shape)}; an input batch must be (N, C, H, W)")
    if not x.is_floating_point():
        raise ValueError(f"{name}: batch {index} has dtype {x.dtype}; inputs must be floating point "
                         f"(e.g. x.float() / 255 for 8-bit images)")
    if x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"{name}: batch {index} has shape {tuple(x.shape)}: it holds no values")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name}: batch {index} has {x.shape[1]} channels, the model takes {channels} "
                         f"(shape {tuple(x.shape)}, expected (N, {channels}, H, W))")
    if finite and not x.is_meta and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: batch {index} holds NaN or inf values")
    return x


def iter_batches(data: Any, name: str = "data", key: Optional[str] = None, channels: Optional[int] = None,
                 batch_size: int = 32, finite: bool = True) -> Iterator[torch.Tensor]:
    """Lazily yield the checked input batches of ``data`` (any form in the module docstring)."""
    for x, _ in _batched(data, name, key, None, channels, batch_size, finite, labels=False):
        yield x


def input_batches(data: Any, name: str = "data", key: Optional[str] = None, channels: Optional[int] = None,
                  batch_size: int = 32, finite: bool = True) -> List[torch.Tensor]:
    """All checked input batches of ``data`` as a list (at least one); see the module docstring."""
    batches = list(iter_batches(data, name, key, channels, batch_size, finite))
    if not batches:
        raise ValueError(f"{name} holds no input batches; expected {FORMS}")
    return batches


def label_of(item: Any, name: str, index: int, label_key: Optional[str] = None) -> Optional[torch.Tensor]:
    """The label of one item as a tensor, or None when it has none: the second element of an
    ``(x, y, ...)`` tuple/list, a dict's ``label_key`` (else the first of :data:`LABEL_KEYS`)."""
    if isinstance(item, (tuple, list)):
        value = item[1] if len(item) > 1 else None
    elif isinstance(item, dict):
        if label_key is not None and label_key not in item:
            raise ValueError(f"{name}: item {index} is a dict with keys {sorted(map(str, item))}; "
                             f"it has no label under label_key={label_key!r}")
        keys = [label_key] if label_key is not None else [k for k in LABEL_KEYS if k in item]
        value = item[keys[0]] if keys else None
    else:
        value = None
    if value is None or isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name}: item {index} has a label of type {type(value).__name__}; "
                         "labels must be class indices (ints or an int tensor)") from None


def _stacked(samples: List[Tuple[torch.Tensor, Optional[torch.Tensor]]], name: str,
             index: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Single samples stacked into one batch, with their labels (all present, or none)."""
    labels = [y for _, y in samples]
    if all(y is None for y in labels):
        return torch.stack([x for x, _ in samples]), None
    if any(y is None for y in labels):
        raise ValueError(f"{name}: batch {index} mixes samples with and without labels")
    return torch.stack([x for x, _ in samples]), torch.stack(labels)


def labelled_batches(data: Any, name: str = "data", key: Optional[str] = None, label_key: Optional[str] = None,
                     channels: Optional[int] = None, batch_size: int = 32,
                     finite: bool = True) -> Iterator[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """Lazily yield ``(input batch, labels or None)`` of ``data``, the inputs checked as in
    :func:`iter_batches` (single samples stacked into batches of ``batch_size``, with their labels)."""
    yield from _batched(data, name, key, label_key, channels, batch_size, finite, labels=True)


def _batched(data: Any, name: str, key: Optional[str], label_key: Optional[str], channels: Optional[int],
             batch_size: int, finite: bool, labels: bool) -> Iterator[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """``(checked input batch, labels)`` per batch; labels are read only when ``labels``."""
    samples: List[Tuple[torch.Tensor, Optional[torch.Tensor]]] = []
    count = 0
    for index, item in enumerate(_items(data, name)):
        x = first_input(item, name, index, key)
        y = label_of(item, name, index, label_key) if labels else None
        if x.dim() == 3:
            samples.append((x, y))
            if len(samples) == batch_size:
                x, y = _stacked(samples, name, count)
                yield check_batch(x, name, count, channels, finite), y
                samples, count = [], count + 1
            continue
        if samples:
            raise ValueError(f"{name}: item {index} is a batch {tuple(x.shape)} after single samples; "
                             "give either batches (N, C, H, W) or samples (C, H, W), not both")
        yield check_batch(x, name, count, channels, finite), y
        count += 1
    if samples:
        x, y = _stacked(samples, name, count)
        yield check_batch(x, name, count, channels, finite), y


def input_size_of(data: Any, name: str = "data", key: Optional[str] = None) -> tuple:
    """``(1, C, H, W)`` of the first input in ``data`` (for entry points that infer the input size)."""
    first = next(iter_batches(data, name, key, batch_size=1, finite=False), None)
    if first is None:
        raise ValueError(f"{name} holds no input batches; expected {FORMS}")
    return (1, *first.shape[1:])


def batches_of(data: Iterable[Any], name: str = "data", key: Optional[str] = None) -> Iterator[Any]:
    """``(input, rest)`` per item, for training loops that also need the labels: ``rest`` is the
    tuple of the item's other elements (``()`` for a bare tensor) or the dict itself."""
    for index, item in enumerate(_items(data, name)):
        x = first_input(item, name, index, key)
        if isinstance(item, (tuple, list)):
            yield x, tuple(item[1:])
        elif isinstance(item, dict):
            yield x, item
        else:
            yield x, ()


__all__ = ["FORMS", "INPUT_KEYS", "LABEL_KEYS", "batches_of", "check_batch", "first_input", "input_batches",
           "input_size_of", "iter_batches", "label_of", "labelled_batches"]
