"""Tensor-Train (TT-matrix) linear layers: a weight matrix stored as a chain of small cores, trained as such.

A ``out x in`` weight with ``in = n_1 ... n_d`` and ``out = m_1 ... m_d`` is the TT-matrix (Oseledets 2011,
Novikov et al. 2015) ``W[(i_1..i_d), (j_1..j_d)] = G_1[i_1, j_1] G_2[i_2, j_2] ... G_d[i_d, j_d]`` with cores
``G_k`` of shape ``(r_{k-1}, m_k, n_k, r_k)``, ``r_0 = r_d = 1``. It has ``sum_k r_{k-1} m_k n_k r_k``
parameters instead of ``in * out``.

TensorLy computes the decomposition (TT-SVD: :func:`tensorly.decomposition.tensor_train_matrix`); the forward is
ours. A plan is a grouping of neighbouring cores: each group is first merged into one bigger core, then the
input is contracted with the merged cores one after the other (last to first). Core by core and "rebuild the
whole matrix" are the two extreme plans; :class:`TTLinear` runs the plan with the fewest multiply-adds for the
batch at hand (:func:`plan_macs`). Out of training (no gradient), when the plain matrix product is cheaper than
every plan, the layer multiplies by the matrix rebuilt from its cores, rebuilt once per change of the cores.

Example:
    >>> layer = TTLinear.from_linear(nn.Linear(784, 300), ranks=8)
    >>> layer.in_factors, layer.out_factors, layer.ranks
    ([7, 4, 4, 7], [4, 5, 5, 3], [1, 8, 8, 8, 1])
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Plan = tuple[tuple[int, ...], ...]


# --- dimensions and ranks -------------------------------------------------------------------------------------


def factorize(n: int, parts: int) -> list[int]:
    """``n`` as a product of ``parts`` factors, as equal as the prime factors allow (largest first). A number
    with fewer prime factors than ``parts`` gets factors of 1 (a TT core of size 1 on that side is legal)."""
    primes, rest, p = [], n, 2
    while p * p <= rest:
        while rest % p == 0:
            primes.append(p)
            rest //= p
        p += 1
    if rest > 1:
        primes.append(rest)
    factors = [1] * parts
    for prime in sorted(primes, reverse=True):  # each prime to the currently smallest factor
        factors[factors.index(min(factors))] *= prime
    return sorted(factors, reverse=True)


def tt_dims(in_features: int, out_features: int, cores: int = 4, in_factors: Sequence[int] | None = None,
            out_factors: Sequence[int] | None = None) -> tuple[list[int], list[int]]:
    """Input and output factors of a TT-matrix: given, or found by :func:`factorize`.

    Found factors are paired largest input with smallest output, and the pairs with the most elements go to
    the ends of the chain, where the cores have one rank of 1 (fewer parameters, cheaper contractions).

    Raises:
        ValueError: given factors whose product is not the dimension, or of different lengths.
    """
    for name, factors, n in (("in_factors", in_factors, in_features), ("out_factors", out_factors, out_features)):
        if factors is not None and (not factors or any(int(f) < 1 for f in factors) or math.prod(factors) != n):
            raise ValueError(f"{name}={list(factors)} must be positive integers whose product is {n}")
    given = in_factors if in_factors is not None else out_factors
    if given is not None:  # the other side, if missing, gets as many factors
        ins = [int(f) for f in in_factors] if in_factors is not None else factorize(in_features, len(given))
        outs = [int(f) for f in out_factors] if out_factors is not None else sorted(factorize(out_features,
                                                                                             len(given)))
        if len(ins) != len(outs):
            raise ValueError(f"in_factors={ins} and out_factors={outs} must have the same length (one pair per core)")
        return ins, outs
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 2:
        raise ValueError(f"cores must be an integer >= 2, got {cores!r}")
    ins, outs = factorize(in_features, cores), sorted(factorize(out_features, cores))
    pairs = sorted(zip(ins, outs, strict=True), key=lambda p: p[0] * p[1], reverse=True)
    front, back = [], []
    for k, pair in enumerate(pairs):  # biggest pairs alternately to the front and the back
        (front if k % 2 == 0 else back).append(pair)
    chain = front + back[::-1]
    return [p[0] for p in chain], [p[1] for p in chain]


def rank_bounds(in_factors: Sequence[int], out_factors: Sequence[int]) -> list[int]:
    """The largest meaningful internal ranks: ``r_k <= min(prod_{i<=k} m_i n_i, prod_{i>k} m_i n_i)``."""
    sizes = [m * n for m, n in zip(out_factors, in_factors, strict=True)]
    return [min(math.prod(sizes[: k + 1]), math.prod(sizes[k + 1:])) for k in range(len(sizes) - 1)]


def full_ranks(ranks: int | Sequence[int], in_factors: Sequence[int], out_factors: Sequence[int]) -> list[int]:
    """``[1, r_1, ..., r_{d-1}, 1]`` from one rank (capped by :func:`rank_bounds` where the chain's ends allow
    less) or a list of the ``d - 1`` internal ranks, checked.

    Raises:
        ValueError: a rank <= 0, a list of the wrong length, or a rank above :func:`rank_bounds`.
    """
    d = len(in_factors)
    bounds = rank_bounds(in_factors, out_factors)
    one = isinstance(ranks, int) and not isinstance(ranks, bool)
    if one and 0 < ranks <= max(bounds):  # one rank: capped where the chain's ends allow less
        return [1, *(min(ranks, b) for b in bounds), 1]
    internal = [ranks] * (d - 1) if one else list(ranks)
    if len(internal) != d - 1 or any(isinstance(r, bool) or not isinstance(r, int) or r <= 0 for r in internal):
        raise ValueError(f"ranks must be a positive integer or a list of {d - 1} positive integers (one between "
                         f"each pair of the {d} cores), got {ranks!r}")
    too_big = [(k + 1, r, b) for k, (r, b) in enumerate(zip(internal, bounds, strict=True)) if r > b]
    if too_big:
        k, r, b = too_big[0]
        raise ValueError(f"rank r_{k}={r} is larger than this TT-matrix allows ({b} for factors in {list(in_factors)}"
                         f", out {list(out_factors)}; the largest ranks are {bounds})")
    return [1, *internal, 1]


def parameter_count(in_factors: Sequence[int], out_factors: Sequence[int], ranks: Sequence[int]) -> int:
    """Number of elements of the cores (``ranks`` with both ends)."""
    return sum(ranks[k] * out_factors[k] * in_factors[k] * ranks[k + 1] for k in range(len(in_factors)))


def ranks_for_ratio(in_factors: Sequence[int], out_factors: Sequence[int], ratio: float) -> list[int]:
    """The largest uniform rank (capped by :func:`rank_bounds`) whose cores are at least ``ratio`` times smaller
    than the dense matrix.

    Raises:
        ValueError: ``ratio`` <= 1, or even rank 1 is not that small.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 1:
        raise ValueError(f"compression_ratio must be a number > 1, got {ratio!r}")
    dense = math.prod(in_factors) * math.prod(out_factors)
    bounds = rank_bounds(in_factors, out_factors)
    best = None
    for r in range(1, max(bounds) + 1):
        ranks = [1, *(min(r, b) for b in bounds), 1]
        if parameter_count(in_factors, out_factors, ranks) * ratio <= dense:
            best = ranks
    if best is None:
        raise ValueError(f"compression_ratio={ratio} is out of reach: rank 1 cores of factors in {list(in_factors)}, "
                         f"out {list(out_factors)} are only {dense / parameter_count(in_factors, out_factors, [1] * (len(in_factors) + 1)):.1f}x smaller")  # noqa: E501
    return best


def _as_tensor4(weight: torch.Tensor, in_factors: Sequence[int], out_factors: Sequence[int]) -> np.ndarray:
    # (out, in) -> (m_1..m_d, n_1..n_d), as TensorLy's TT-matrix wants it; float64 for the SVDs
    return weight.detach().cpu().double().numpy().reshape(*out_factors, *in_factors)


def ranks_for_energy(weight: torch.Tensor, in_factors: Sequence[int], out_factors: Sequence[int], energy: float
                     ) -> list[int]:
    """Smallest ranks keeping ``energy`` of the squared singular values of each unfolding of the TT-matrix
    (the unfolding that splits cores ``1..k`` from ``k+1..d`` bounds the error of cutting rank ``r_k``)."""
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0 < energy <= 1:
        raise ValueError(f"energy must be a number in (0, 1], got {energy!r}")
    d = len(in_factors)
    tensor = _as_tensor4(weight, in_factors, out_factors)
    paired = tensor.transpose([axis for k in range(d) for axis in (k, d + k)])  # (m_1, n_1, m_2, n_2, ...)
    ranks = [1]
    for k in range(1, d):
        rows = math.prod(out_factors[:k]) * math.prod(in_factors[:k])
        s = np.linalg.svd(paired.reshape(rows, -1), compute_uv=False) ** 2
        kept = np.cumsum(s) / max(s.sum(), np.finfo(float).tiny)
        ranks.append(int(np.searchsorted(kept, energy - 1e-12) + 1))
    return [*ranks, 1]


def tt_svd(weight: torch.Tensor, in_factors: Sequence[int], out_factors: Sequence[int], ranks: Sequence[int]
           ) -> list[torch.Tensor]:
    """Cores ``(r_{k-1}, m_k, n_k, r_k)`` of the ``out x in`` matrix ``weight`` (TensorLy's TT-SVD)."""
    import tensorly  # imported here: only a swap needs it
    from tensorly.decomposition import tensor_train_matrix

    with tensorly.backend_context("numpy"):  # whatever backend another import (TensorLy-Torch) made global
        tt = tensor_train_matrix(_as_tensor4(weight, in_factors, out_factors), list(ranks))
    return [torch.from_numpy(np.ascontiguousarray(f)).to(weight.dtype) for f in tt.factors]


# --- contraction ----------------------------------------------------------------------------------------------


def merge_cores(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Neighbouring cores ``(r, m_i, n_i, r')`` merged into one ``(r_first, prod m, prod n, r_last)`` core."""
    merged = cores[0]
    for core in cores[1:]:  # (r0, M, N, r) x (r, m, n, r1) -> (r0, M, m, N, n, r1)
        r0, big_m, big_n, _ = merged.shape
        _, m, n, r1 = core.shape
        joined = merged.reshape(-1, merged.shape[-1]) @ core.reshape(core.shape[0], -1)
        merged = joined.reshape(r0, big_m, big_n, m, n, r1).transpose(2, 3).reshape(r0, big_m * m, big_n * n, r1)
    return merged


def to_matrix(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """The ``out x in`` matrix the cores represent."""
    merged = merge_cores(cores)
    return merged.reshape(merged.shape[1], merged.shape[2])


def contract(x: torch.Tensor, cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """``x @ W.T`` for a ``(batch, in)`` input and the TT cores of ``W``, contracting the last core first.

    The running tensor is kept as ``(done outputs M, batch and remaining inputs P, n_k * r_k)``, so each step is
    one matrix product ``(M P, n_k r_k) @ (n_k r_k, m_k r_{k-1})`` and one transpose that moves ``m_k`` out.
    """
    batch = x.shape[0]
    in_factors = [c.shape[2] for c in cores]
    state = x.reshape(1, -1, in_factors[-1])
    for k in range(len(cores) - 1, -1, -1):
        r0, m, n, r1 = cores[k].shape
        kernel = cores[k].permute(2, 3, 1, 0).reshape(n * r1, m * r0)
        done, rows, _ = state.shape
        out = state.reshape(done * rows, n * r1) @ kernel  # (done, rows, m, r0)
        if k == 0:
            state = out.reshape(done, batch, m)
        else:
            left = rows // in_factors[k - 1]
            out = out.reshape(done, left, in_factors[k - 1], m, r0).permute(3, 0, 1, 2, 4)
            state = out.reshape(m * done, left, in_factors[k - 1] * r0)
    return state.permute(1, 2, 0).reshape(batch, -1)  # (batch, m_1, m_2 ... m_d)


def plans(cores: int) -> list[Plan]:
    """Every grouping of ``cores`` neighbouring cores into consecutive groups."""
    found = []
    for cuts in itertools.product((False, True), repeat=cores - 1):
        groups, current = [], [0]
        for k, cut in enumerate(cuts, start=1):
            if cut:
                groups.append(tuple(current))
                current = [k]
            else:
                current.append(k)
        groups.append(tuple(current))
        found.append(tuple(groups))
    return found


def plan_macs(shapes: Sequence[Sequence[int]], plan: Plan, batch: int) -> int:
    """Multiply-adds of running ``plan`` on a batch: merging each group's cores, then the contraction."""
    macs, merged = 0, []
    for group in plan:
        r0, m, n, r1 = shapes[group[0]]
        for k in group[1:]:
            _, m2, n2, r2 = shapes[k]
            macs += r0 * m * n * r1 * m2 * n2 * r2
            m, n, r1 = m * m2, n * n2, r2
        merged.append((r0, m, n, r1))
    for k, (r0, m, _, r1) in enumerate(merged):
        outputs_done = math.prod(s[1] for s in merged[k + 1:])
        inputs_left = math.prod(s[2] for s in merged[: k + 1])
        macs += batch * outputs_done * inputs_left * r1 * m * r0
    return macs


def run_plan(x: torch.Tensor, cores: Sequence[torch.Tensor], plan: Plan) -> torch.Tensor:
    return contract(x, [merge_cores([cores[k] for k in group]) for group in plan])


# --- the layer ------------------------------------------------------------------------------------------------


EXPORT_BATCH = 64  # the batch size whose cheapest contraction order an exported graph (ONNX) runs


class TTLinear(nn.Module):
    """A linear layer whose weight is a TT-matrix; the cores are its parameters (``cores.0`` ... ``cores.{d-1}``).

    Args:
        in_features: as ``nn.Linear``.
        out_features: as ``nn.Linear``.
        in_factors: ``n_1..n_d`` (product ``in_features``).
        out_factors: ``m_1..m_d`` (product ``out_features``).
        ranks: ``[1, r_1, ..., r_{d-1}, 1]``, or one internal rank, or the ``d - 1`` internal ranks.
        bias: learn an additive bias.
    """

    prunable_parameters = ("cores",)  # what magnitude pruning selects in a TT layer (not the bias)

    def __init__(self, in_features: int, out_features: int, in_factors: Sequence[int], out_factors: Sequence[int],
                 ranks: int | Sequence[int], bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.in_factors, self.out_factors = tt_dims(in_features, out_features, in_factors=in_factors,
                                                    out_factors=out_factors)
        d = len(self.in_factors)
        if not isinstance(ranks, int) and len(ranks) == d + 1:
            if ranks[0] != 1 or ranks[-1] != 1:
                raise ValueError(f"the boundary ranks must be 1, got {list(ranks)}")
            ranks = ranks[1:-1]
        self.ranks = full_ranks(ranks, self.in_factors, self.out_factors)
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(self.ranks[k], self.out_factors[k], self.in_factors[k], self.ranks[k + 1]))
            for k in range(d))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._plans: dict[int, Plan | None] = {}  # by batch size; shapes never change
        self._gradient_plans: dict[int, Plan] = {}
        self._cached: tuple[list[tuple[int, int]], torch.Tensor] | None = None  # (cores' ids and versions, matrix)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Each core scaled so the product has the variance of nn.Linear's default init (1 / (3 in)).
        target = 1.0 / (3.0 * self.in_features)
        per_core = (target / math.prod(self.ranks[1:-1])) ** (1.0 / len(self.cores))
        with torch.no_grad():
            for core in self.cores:
                core.normal_(0.0, math.sqrt(per_core))

    @classmethod
    def from_linear(cls, layer: nn.Linear, ranks: int | Sequence[int], in_factors: Sequence[int] | None = None,
                    out_factors: Sequence[int] | None = None, cores: int = 4) -> TTLinear:
        """A TT layer initialized by TT-SVD of ``layer``'s weight (bias copied)."""
        ins, outs = tt_dims(layer.in_features, layer.out_features, cores, in_factors, out_factors)
        tt = cls(layer.in_features, layer.out_features, ins, outs, ranks, bias=layer.bias is not None)
        with torch.no_grad():
            for core, value in zip(tt.cores, tt_svd(layer.weight, ins, outs, tt.ranks), strict=True):
                core.copy_(value)
            if layer.bias is not None:
                tt.bias.copy_(layer.bias)
        return tt.to(layer.weight.device)

    def core_tensors(self) -> list[torch.Tensor]:
        # nn.ParameterList's own iteration looks every core up by name (~10 us for 4 cores): read its dict
        return list(self.cores._parameters.values())

    def weight_matrix(self) -> torch.Tensor:
        """The ``out x in`` weight the cores represent."""
        return to_matrix(self.core_tensors())

    def plan(self, batch: int) -> Plan | None:
        """The contraction plan with the fewest multiply-adds for ``batch`` rows, or ``None`` when multiplying by
        the (cached) rebuilt matrix is cheaper still (only used without gradients)."""
        if batch not in self._plans:
            best = self.cheapest_plan(batch)
            cost = plan_macs([tuple(c.shape) for c in self.cores], best, batch)
            self._plans[batch] = None if batch * self.in_features * self.out_features < cost else best
        return self._plans[batch]

    def cheapest_plan(self, batch: int) -> Plan:
        """The contraction plan with the fewest multiply-adds for ``batch`` rows (with gradients, always used)."""
        if batch not in self._gradient_plans:
            shapes = [tuple(c.shape) for c in self.cores]
            self._gradient_plans[batch] = min(plans(len(shapes)), key=lambda p: plan_macs(shapes, p, batch))
        return self._gradient_plans[batch]

    def _apply(self, fn, recurse=True):
        self._cached = None  # .to(), .cuda(), .double() ... replace the cores' data without bumping their versions
        return super()._apply(fn, recurse)

    def _rebuilt(self, cores: list[torch.Tensor]) -> torch.Tensor:
        # Valid while no core changed in place (optimizer steps and load_state_dict bump the version counters)
        # and no core was replaced by another tensor (a new one starts its own count).
        key = [(id(c), c._version) for c in cores]
        if self._cached is None or self._cached[0] != key:
            with torch.no_grad():
                self._cached = (key, to_matrix(cores))
        return self._cached[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        batch = flat.shape[0]
        cores = self.core_tensors()
        if torch.compiler.is_exporting():
            # One graph for every batch size (ONNX's dynamic batch axis): the contraction, in the order with the
            # fewest multiply-adds at EXPORT_BATCH rows; never the rebuilt matrix, so the cores stay the weights.
            y = run_plan(flat, cores, self.cheapest_plan(EXPORT_BATCH))
        elif torch.is_grad_enabled() and (flat.requires_grad or any(c.requires_grad for c in cores)):
            y = run_plan(flat, cores, self.cheapest_plan(batch))
        else:
            plan = self.plan(batch)
            if plan is None:  # the same kernel as nn.Linear's, on the rebuilt matrix
                y = F.linear(flat, self._rebuilt(cores), self.bias)
                return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)
            y = run_plan(flat, cores, plan)
        if self.bias is not None:
            y = y + self.bias
        lead = x.shape[:-1]
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, in_factors={self.in_factors}, "
                f"out_factors={self.out_factors}, ranks={self.ranks}, bias={self.bias is not None}")
