"""Factorize a dense conv kernel into the weights of an efficient kind (pure tensor math).

Each function takes a conv weight ``W`` of shape ``(O, C/g, kh, kw)`` and returns the new
stages' weights plus the energy it discarded (squared Frobenius norm of the weight error). The
SVD-based ones are optimal in weight space (Eckart-Young) and exact at full rank:

* :func:`dsconv` — per input channel ``i``, the ``(O/g) x (kh*kw)`` slice ``W[:, i]`` keeps
  its rank-``m`` SVD: ``P_i = U_m S_m^(1/2)`` (pointwise), ``D_i = S_m^(1/2) V_m^T`` (depthwise);
  the dual (pointwise first) does the same per output channel.
* :func:`asymmetric` — ``W`` reshaped to ``M[(c,h), (o,w)]`` keeps its rank-``K`` SVD: a
  ``kh x 1`` stage ``C -> K`` and a ``1 x kw`` stage ``K -> O``.
* :func:`asymmetric_depthwise` — each 2-D kernel of a depthwise conv keeps its rank-1 SVD.
* :func:`tucker2` — HOSVD of the output and input modes (optionally refined by HOOI):
  ``1x1`` reduce ``C -> r1``, ``kxk`` core ``r1 -> r2``, ``1x1`` expand ``r2 -> O``.
* :func:`grouped` — keep the block diagonal of a dense conv (``g`` groups).

Where the new stages go (stride, padding, dilation on the spatial stage, bias on the last)
is the surgery's business; these functions only produce weights.

Speed: a rank ladder asks for the discarded energy at every rank of a layer. Each function
reads it from one decomposition of the kernel (the truncations share it), computes the
stage weights only when they are read (:class:`Factorization` holds them lazily), and, inside
:func:`reuse_decompositions`, decomposes each weight once per mode for the whole block.
A decomposition is the symmetric eigendecomposition of the smaller Gram matrix in float64
(``A^T A = V S^2 V^T``): the same truncations as an SVD, and on a CPU 10-100x faster for the
many small or wide matrices of a conv kernel.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import torch

from leanconv._validate import check_divisible, check_positive_int


class LazyWeights(Mapping):
    """Stage weights by name, built on first access (a ladder reads most rungs' energy only)."""

    def __init__(self, build: Callable[[], Dict[str, torch.Tensor]]) -> None:
        self._build: Optional[Callable[[], Dict[str, torch.Tensor]]] = build
        self._value: Dict[str, torch.Tensor] = {}

    def _get(self) -> Dict[str, torch.Tensor]:
        if self._build is not None:
            self._value, self._build = self._build(), None
        return self._value

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._get()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __repr__(self) -> str:
        return f"LazyWeights({sorted(self._get())})"


@dataclass
class Factorization:
    """New stage weights by stage name, and the discarded energy ``||W - W_hat||_F^2``."""

    weights: Mapping[str, torch.Tensor]
    discarded_energy: float
    total_energy: float
    buffers: Optional[Dict[str, torch.Tensor]] = None  # non-learned state (channel orders)

    @property
    def relative_error(self) -> float:
        """``||W - W_hat||_F / ||W||_F``."""
        return (self.discarded_energy / self.total_energy) ** 0.5 if self.total_energy else 0.0


def _check_weight(weight: torch.Tensor) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError(f"weight must be a 4-D conv weight (O, C/g, kh, kw), got {getattr(weight, 'shape', weight)}")


_REUSE: ContextVar[Optional[Dict[Any, Any]]] = ContextVar("leanconv_factorize_reuse", default=None)


@contextmanager
def reuse_decompositions() -> Iterator[None]:
    """Inside the block, each kernel's decomposition (per mode) is computed once and reused by
    every rank asked for; the memory is freed when the block ends. A weight changed in place
    (its version counter moves) is decomposed again. Nested blocks share the outer one."""
    if _REUSE.get() is not None:
        yield
        return
    token = _REUSE.set({})
    try:
        yield
    finally:
        _REUSE.reset(token)


def _memo(weight: torch.Tensor, tag: Any, compute: Callable[[], Any]) -> Any:
    """``compute()``, remembered for ``(weight, tag)`` inside :func:`reuse_decompositions`.

    The key is the weight's memory, layout and version counter; the entry holds the weight
    itself, so its memory cannot be reused by another tensor while the entry lives.
    """
    cache = _REUSE.get()
    if cache is None:
        return compute()
    try:
        version = weight._version
    except RuntimeError:  # an inference tensor has no version counter: do not remember
        return compute()
    key = (tag, weight.data_ptr(), weight.storage_offset(), tuple(weight.shape), weight.stride(), weight.dtype,
           str(weight.device), version)
    if key not in cache:
        cache[key] = (weight, compute())
    return cache[key][1]


def _energy(weight: torch.Tensor) -> float:
    return _memo(weight, "energy", lambda: float(weight.double().pow(2).sum()))


class _Spectrum:
    """The singular value decomposition of a (batch of) float64 matrices ``(..., m, n)``, from
    the eigendecomposition of the smaller Gram matrix; truncations are read from it."""

    def __init__(self, matrix: torch.Tensor) -> None:
        self.wide = matrix.shape[-1] > matrix.shape[-2]
        self.a = matrix.transpose(-2, -1) if self.wide else matrix  # (..., p, q), q <= p
        self._gram: Optional[torch.Tensor] = self.a.transpose(-2, -1) @ self.a
        self._v: Optional[torch.Tensor] = None
        # values and vectors at once: eigh costs about what eigvalsh does (ResNet-50's 17 kxk
        # kernels: 1.6 s against 1.7 s), and a converted layer needs the vectors anyway
        self.v  # noqa: B018 (computes values and vectors)
        tail = self.lam.reshape(-1, self.lam.shape[-1]).sum(0).flip(0).cumsum(0).flip(0)  # tail[k] = sum_{j>=k}
        self.tail = torch.cat([tail, tail.new_zeros(1)]).tolist()

    def _values(self, ascending: torch.Tensor) -> None:
        self.lam = ascending.flip(-1).clamp_min(0)  # descending
        self.s = self.lam.sqrt()

    @property
    def v(self) -> torch.Tensor:
        """The right singular vectors of ``a`` (eigenvectors of its Gram matrix), descending."""
        if self._v is None:
            lam, v = torch.linalg.eigh(self._gram)
            self._values(lam)
            self._v, self._gram = v.flip(-1), None
        return self._v

    def discarded(self, rank: int) -> float:
        """Squared Frobenius error of the best rank-``rank`` approximation (summed over the batch)."""
        return max(self.tail[min(rank, len(self.tail) - 1)], 0.0)

    def _inverse_root(self, keep: int) -> torch.Tensor:
        s = self.s[..., :keep]
        floor = 1e-7 * self.s[..., :1]  # below it, Gram-based singular values are rounding noise
        return torch.where(s > floor, s.clamp_min(1e-300).rsqrt(), torch.zeros_like(s))

    def factors(self, rank: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(left, right)``, ``left @ right`` the best rank-``rank`` approximation, the singular
        values split evenly (``U S^(1/2)``, ``S^(1/2) V^T``), zero-padded above the matrix's rank."""
        v = self.v[..., :rank]  # first: the vectors may refine the values
        keep = v.shape[-1]
        root = self.s[..., :keep].sqrt()
        big = (self.a @ v) * self._inverse_root(keep)[..., None, :]  # (..., p, keep): U S^(1/2) of a
        small = v * root[..., None, :]  # (..., q, keep): V S^(1/2) of a
        left, right = (small, big.transpose(-2, -1)) if self.wide else (big, small.transpose(-2, -1))
        if keep < rank:
            left = torch.cat([left, left.new_zeros(*left.shape[:-1], rank - keep)], dim=-1)
            right = torch.cat([right, right.new_zeros(*right.shape[:-2], rank - keep, right.shape[-1])], dim=-2)
        return left, right

    def left_vectors(self) -> torch.Tensor:
        """The left singular vectors ``(..., m, min(m, n))`` (zero columns for zero singular values)."""
        if self.wide:
            return self.v
        return (self.a @ self.v) * (self._inverse_root(self.s.shape[-1]) ** 2)[..., None, :]


def _spectrum(weight: torch.Tensor, tag: Any, matrix: Callable[[], torch.Tensor]) -> _Spectrum:
    return _memo(weight, tag, lambda: _Spectrum(matrix().double()))


def _truncated_svd(matrix: torch.Tensor, rank: int) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """``(left, right, discarded)`` with ``left @ right`` the best rank-``rank`` approximation
    (batched over leading dimensions; ``discarded`` summed over them), in ``matrix``'s dtype."""
    spectrum = _Spectrum(matrix.double())
    left, right = spectrum.factors(rank)
    return left.to(matrix.dtype), right.to(matrix.dtype), spectrum.discarded(rank)


def dsconv(weight: torch.Tensor, depth_multiplier: int = 1, groups: int = 1,
           order: str = "depthwise_first") -> Factorization:
    """Depthwise then pointwise (``order='depthwise_first'``, MobileNet) or its dual.

    ``depthwise_first``: depthwise (``C -> C*m``, groups C) then pointwise (``C*m -> O``,
    groups g); ``weights['depthwise']`` ``(C*m, 1, kh, kw)``, ``weights['pointwise']``
    ``(O, C*m/g, 1, 1)``; per input channel the ``(O/g) x (kh*kw)`` slice keeps its rank-``m``
    SVD. MAC ratio to dense: ``m/O + m/(kh*kw)``.

    ``pointwise_first``: pointwise (``C -> O*m``, groups g) then a ``kh x kw`` conv
    (``O*m -> O``, groups O: each output reads its own ``m`` channels); ``weights['pointwise']``
    ``(O*m, C/g, 1, 1)``, ``weights['depthwise']`` ``(O, m, kh, kw)``; per output channel the
    ``(C/g) x (kh*kw)`` slice keeps its rank-``m`` SVD. The pointwise stage runs at the input
    resolution, so this order pays off when ``C > O`` and the stride is 1.
    """
    _check_weight(weight)
    m = check_positive_int(depth_multiplier, "depth_multiplier")
    g = check_positive_int(groups, "groups")
    if order not in ("depthwise_first", "pointwise_first"):
        raise ValueError(f"order={order!r} must be one of ('depthwise_first', 'pointwise_first')")
    out_channels, c_per_group, kh, kw = weight.shape
    check_divisible(out_channels, "out_channels", g, "groups")
    dtype, total = weight.dtype, _energy(weight)
    if order == "pointwise_first":
        # one (C/g) x (kh*kw) matrix per output channel, all decomposed in one batched call
        spectrum = _spectrum(weight, "dsconv_pointwise_first",
                             lambda: weight.reshape(out_channels, c_per_group, kh * kw))

        def pointwise_first() -> Dict[str, torch.Tensor]:
            left, right = spectrum.factors(m)
            return {"pointwise": left.transpose(1, 2).reshape(out_channels * m, c_per_group, 1, 1).to(dtype).contiguous(),
                    "depthwise": right.reshape(out_channels, m, kh, kw).to(dtype).contiguous()}

        return Factorization(LazyWeights(pointwise_first), spectrum.discarded(m), total)
    o_per_group = out_channels // g
    in_channels = c_per_group * g
    # one (O/g) x (kh*kw) matrix per input channel i (group j, local index l): batch over (j, l)
    spectrum = _spectrum(weight, ("dsconv_depthwise_first", g),
                         lambda: weight.reshape(g, o_per_group, c_per_group, kh * kw).permute(0, 2, 1, 3))

    def depthwise_first() -> Dict[str, torch.Tensor]:
        left, right = spectrum.factors(m)  # (g, C/g, O/g, m), (g, C/g, m, k)
        return {"depthwise": right.reshape(in_channels * m, 1, kh, kw).to(dtype).contiguous(),
                "pointwise": left.permute(0, 2, 1, 3).reshape(out_channels, c_per_group * m, 1, 1).to(dtype).contiguous()}

    return Factorization(LazyWeights(depthwise_first), spectrum.discarded(m), total)


def asymmetric(weight: torch.Tensor, mid_channels: int, order: str = "kx1_first") -> Factorization:
    """``kh x 1`` conv (``C -> K``) then ``1 x kw`` conv (``K -> O``), ``K = mid_channels``.

    Returns ``weights['conv_kx1']`` and ``weights['conv_1xk']``. With ``order='kx1_first'`` they
    are ``(K, C, kh, 1)`` and ``(O, K, 1, kw)``, whose composition ``sum_k B[o,k,w] A[k,c,h]`` is
    the rank-``K`` SVD of ``M[(c,h),(o,w)]``; full rank is ``K = min(C*kh, O*kw)``. With
    ``order='1xk_first'`` the ``1 x kw`` stage comes first (``(K, C, 1, kw)`` then
    ``(O, K, kh, 1)``, the SVD of ``M[(c,w),(o,h)]``), as in seed 000's ConvBlock. Dense (groups 1)
    kernels only.
    """
    _check_weight(weight)
    k = check_positive_int(mid_channels, "mid_channels")
    if order not in ("kx1_first", "1xk_first"):
        raise ValueError(f"order={order!r} must be one of ('kx1_first', '1xk_first')")
    return _asymmetric(weight, k, order, remember=True)


def _asymmetric(weight: torch.Tensor, k: int, order: str, remember: bool) -> Factorization:
    """:func:`asymmetric` after its checks; ``remember=False`` for a kernel made on the fly (a
    Tucker-2 core), whose decomposition no later call can reuse."""
    if order == "1xk_first":
        # The same problem with height and width swapped; swap the stage kernels back.
        swapped = _asymmetric(weight.transpose(2, 3), k, "kx1_first", remember)
        return Factorization(
            LazyWeights(lambda: {"conv_1xk": swapped.weights["conv_kx1"].transpose(2, 3).contiguous(),
                                 "conv_kx1": swapped.weights["conv_1xk"].transpose(2, 3).contiguous()}),
            swapped.discarded_energy, swapped.total_energy,
        )
    out_channels, in_channels, kh, kw = weight.shape

    def matrix() -> torch.Tensor:
        return weight.permute(1, 2, 0, 3).reshape(in_channels * kh, out_channels * kw)

    spectrum = _spectrum(weight, "asymmetric", matrix) if remember else _Spectrum(matrix().double())
    total = _energy(weight) if remember else float(weight.double().pow(2).sum())

    def stages() -> Dict[str, torch.Tensor]:
        left, right = spectrum.factors(k)
        return {"conv_kx1": left.reshape(in_channels, kh, k).permute(2, 0, 1).unsqueeze(-1).to(weight.dtype).contiguous(),
                "conv_1xk": right.reshape(k, out_channels, kw).permute(1, 0, 2).unsqueeze(2).to(weight.dtype).contiguous()}

    return Factorization(LazyWeights(stages), spectrum.discarded(k), total)


def asymmetric_depthwise(weight: torch.Tensor) -> Factorization:
    """A depthwise ``kh x kw`` kernel ``(C, 1, kh, kw)`` as depthwise ``kh x 1`` then ``1 x kw``.

    Each channel's 2-D kernel keeps its rank-1 SVD (exact for separable kernels such as box or
    Gaussian filters).
    """
    _check_weight(weight)
    channels, one, kh, kw = weight.shape
    if one != 1:
        raise ValueError(f"weight must be depthwise (C, 1, kh, kw), got {tuple(weight.shape)}")
    left, right, discarded = _truncated_svd(weight[:, 0], 1)  # one decomposition per channel, batched
    vertical = left.reshape(channels, 1, kh, 1).contiguous()
    horizontal = right.reshape(channels, 1, 1, kw).contiguous()
    return Factorization({"conv_kx1": vertical, "conv_1xk": horizontal}, discarded, _energy(weight))


def tucker2(weight: torch.Tensor, ranks: Tuple[int, int], hooi_iterations: int = 0,
            core_mid_channels: Optional[int] = None) -> Factorization:
    """``1x1`` reduce (``C -> r1``), ``kxk`` core (``r1 -> r2``), ``1x1`` expand (``r2 -> O``).

    HOSVD: the expand factor is the top-``r2`` left singular vectors of the output-mode
    unfolding, the reduce factor the top-``r1`` of the input-mode unfolding, the core the
    projection of ``W`` on both. ``hooi_iterations`` alternating refinements (HOOI) never
    increase the error. Exact at ``ranks = (C, O)``.

    ``core_mid_channels=K`` also splits the core into ``kh x 1`` (``r1 -> K``) then ``1 x kw``
    (``K -> r2``) by :func:`asymmetric` (weights ``core.conv_kx1``, ``core.conv_1xk``): the
    LPRNet block shape. The two errors add, since the factors have orthonormal columns:
    ``||W - W_hat||^2 = (||W||^2 - ||core||^2) + ||core - core_hat||^2``.
    """
    _check_weight(weight)
    if not isinstance(ranks, (tuple, list)) or len(ranks) != 2:
        raise ValueError(f"ranks={ranks!r} must be a pair (r1, r2) of ints >= 1")
    r1, r2 = (check_positive_int(r, "ranks") for r in ranks)
    if hooi_iterations:
        u_out, u_in = _hooi(weight.double(), r1, r2, hooi_iterations)
        core = torch.einsum("ochw,os,cr->srhw", weight.double(), u_out, u_in)
        discarded = max(_energy(weight) - float(core.pow(2).sum()), 0.0)
    else:  # HOSVD: every rank's factors are leading columns of one decomposition per mode
        u_out_all, u_in_all, core_all, kept = _memo(weight, "tucker2", lambda: _hosvd(weight.double()))
        u_out, u_in = _columns(u_out_all, r2), _columns(u_in_all, r1)
        core = _columns(_columns(core_all, r1, dim=1), r2, dim=0)
        discarded = max(_energy(weight) - kept[min(r2, kept.shape[0]) - 1, min(r1, kept.shape[1]) - 1].item(), 0.0)
    if core_mid_channels is not None:
        split = _asymmetric(core, check_positive_int(core_mid_channels, "core_mid_channels"), "kx1_first", False)
        discarded += split.discarded_energy
    out_channels, in_channels = weight.shape[:2]

    def stages() -> Dict[str, torch.Tensor]:
        dtype = weight.dtype
        weights = {"reduce": u_in.t().reshape(r1, in_channels, 1, 1).to(dtype).contiguous(),
                   "expand": u_out.reshape(out_channels, r2, 1, 1).to(dtype).contiguous()}
        if core_mid_channels is None:
            weights["core"] = core.to(dtype).contiguous()
        else:
            weights.update({f"core.{name}": w.to(dtype) for name, w in split.weights.items()})
        return weights

    return Factorization(LazyWeights(stages), discarded, _energy(weight))


def _columns(matrix: torch.Tensor, rank: int, dim: int = 1) -> torch.Tensor:
    """The first ``rank`` entries of ``matrix`` along ``dim``, zero-padded up to ``rank``."""
    kept = matrix.narrow(dim, 0, min(rank, matrix.shape[dim]))
    if kept.shape[dim] == rank:
        return kept
    pad = list(kept.shape)
    pad[dim] = rank - kept.shape[dim]
    return torch.cat([kept, kept.new_zeros(pad)], dim=dim)


def _hosvd(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both modes' singular vectors, the full projected core, and the energy the core keeps at
    every ``(r2, r1)``: ``kept[s, r]`` sums the squared core over outputs ``<= s``, inputs ``<= r``."""
    out_channels, in_channels = w.shape[:2]
    u_out = _Spectrum(w.reshape(out_channels, -1)).left_vectors()
    u_in = _Spectrum(w.permute(1, 0, 2, 3).reshape(in_channels, -1)).left_vectors()
    core = torch.einsum("ochw,os,cr->srhw", w, u_out, u_in)
    kept = core.pow(2).sum((2, 3)).cumsum(0).cumsum(1)
    return u_out, u_in, core, kept


def _hooi(w: torch.Tensor, r1: int, r2: int, iterations: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """HOSVD then ``iterations`` alternating refinements (HOOI); each never increases the error."""
    out_channels, in_channels = w.shape[:2]

    def leading(unfolded: torch.Tensor, rank: int) -> torch.Tensor:
        return _columns(torch.linalg.svd(unfolded, full_matrices=False)[0], rank)

    u_out = leading(w.reshape(out_channels, -1), r2)
    u_in = leading(w.permute(1, 0, 2, 3).reshape(in_channels, -1), r1)
    for _ in range(iterations):
        projected_in = torch.einsum("ochw,cr->orhw", w, u_in)
        u_out = leading(projected_in.reshape(out_channels, -1), r2)
        projected_out = torch.einsum("ochw,os->schw", w, u_out)
        u_in = leading(projected_out.permute(1, 0, 2, 3).reshape(in_channels, -1), r1)
    return u_out, u_in


def grouped(weight: torch.Tensor, groups: int, permute: bool = False, iterations: int = 10) -> Factorization:
    """Keep the block diagonal of a dense kernel: ``(O, C, kh, kw) -> (O, C/g, kh, kw)``.

    Output channel ``o`` of group ``j`` keeps its weights on input channels ``j*C/g ...``;
    the discarded energy is that of the off-diagonal blocks. With ``permute=True`` the
    channels are first reordered so that more energy falls on the diagonal blocks: alternately,
    outputs then inputs are reassigned to the group holding most of their energy (equal group
    sizes, greedy), starting from the identity and keeping the best order seen, so it never
    keeps less than ``permute=False``. ``buffers['input_order']`` lists the input channel read
    at each position of the grouped conv, ``buffers['output_order']`` the output channel each
    of its outputs stands for; ``weights['weight']`` is in that order.
    """
    _check_weight(weight)
    g = check_positive_int(groups, "groups")
    out_channels, in_channels = weight.shape[:2]
    check_divisible(out_channels, "out_channels", g, "groups")
    check_divisible(in_channels, "in_channels", g, "groups")
    total = float(weight.double().pow(2).sum())
    if not permute:
        blocks = _block_diagonal(weight, g, torch.arange(out_channels), torch.arange(in_channels), total)
        return Factorization(blocks.weights, blocks.discarded_energy, total)
    energy = weight.double().pow(2).sum((2, 3))  # (O, C)
    out_group = torch.arange(out_channels) // (out_channels // g)
    in_group = torch.arange(in_channels) // (in_channels // g)

    def kept(out_group: torch.Tensor, in_group: torch.Tensor) -> float:
        return float(energy[out_group[:, None] == in_group[None, :]].sum())

    best = (kept(out_group, in_group), out_group, in_group)
    for _ in range(iterations):
        toward = torch.stack([energy[:, in_group == j].sum(1) for j in range(g)], 1)  # (O, g)
        out_group = _balanced_assignment(toward, g)
        toward = torch.stack([energy[out_group == j].sum(0) for j in range(g)], 1)  # (C, g)
        in_group = _balanced_assignment(toward, g)
        score = kept(out_group, in_group)
        if score <= best[0] + 1e-12 * total:
            break
        best = (score, out_group, in_group)
    _, out_group, in_group = best
    return _block_diagonal(weight, g, torch.argsort(out_group, stable=True), torch.argsort(in_group, stable=True),
                           total)


def _balanced_assignment(affinity: torch.Tensor, groups: int) -> torch.Tensor:
    """Each row to a group, ``rows/groups`` per group, largest affinities first (greedy)."""
    rows = affinity.shape[0]
    capacity = [rows // groups] * groups
    assignment = torch.full((rows,), -1, dtype=torch.long)
    for flat in torch.argsort(affinity.flatten(), descending=True, stable=True).tolist():
        row, group = divmod(flat, groups)
        if assignment[row] < 0 and capacity[group] > 0:
            assignment[row] = group
            capacity[group] -= 1
    return assignment


def _block_diagonal(weight: torch.Tensor, g: int, output_order: torch.Tensor, input_order: torch.Tensor,
                    total: float) -> Factorization:
    reordered = weight[output_order][:, input_order]
    o_per, c_per = weight.shape[0] // g, weight.shape[1] // g
    blocks = [reordered[j * o_per:(j + 1) * o_per, j * c_per:(j + 1) * c_per] for j in range(g)]
    kept = torch.cat(blocks, dim=0).contiguous()
    buffers = {"input_order": input_order, "output_order": output_order}
    return Factorization({"weight": kept}, total - float(kept.double().pow(2).sum()), total, buffers)


__all__ = ["Factorization", "LazyWeights", "asymmetric", "asymmetric_depthwise", "dsconv", "grouped", "reuse_decompositions",
           "tucker2"]
