"""Sparse voxel tensors and the three sparse convolutions the 3D VAEs use, each with two backends.

- ``SubMConv3d``: submanifold convolution (k x k x k, stride 1): outputs only at the input's
  active voxels, so the active set never dilates.
- ``SparseDownsample``: a 2 x 2 x 2 convolution with stride 2: a coarse voxel is active when any
  of its 8 children is; each child contributes through the weight of its octant.
- ``SparseUpsample``: the generative transpose (2 x 2 x 2, stride 2): every active voxel makes all
  8 children; the caller prunes them with an occupancy classifier (:meth:`SparseTensor.select`).

Backends: ``"torch"`` is pure PyTorch (hash lookups by ``searchsorted`` on packed int64 keys,
gather, matmul, ``index_add``); it is the reference and runs anywhere. ``"spconv"`` calls
spconv's kernels with the same weights (layout ``[C_out, k, k, k, C_in]``, spconv's own). The
default ``"auto"`` uses spconv when it is installed (it is the faster one on CPU too, measured
forward + backward on 2 cores: the small structure VAE on two 64^3 crops, 8 k voxels, 0.13 s vs
0.23 s; the small texture VAE on 961 voxels, 0.059 s vs 0.072 s) and the torch twin otherwise.
Tests check both against dense ``conv3d`` / ``conv_transpose3d``.

spconv on CPU needs care (DEVELOPERS.md): its Python layer asks ``torch.cuda`` for a stream even
for CPU tensors (backward fails), which :func:`load_spconv` patches; and its CPU kernels give
wrong, non-deterministic results with more than one torch thread, so CPU calls through spconv run
under :func:`single_thread`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from earthgen_base.errors import MissingDependencyError, UserInputError

BACKENDS = ("auto", "torch", "spconv")
_SPCONV = None


def load_spconv():
    """Import ``spconv.pytorch`` (once), patched so CPU backward works; raises
    :class:`MissingDependencyError` naming the install command when it is missing."""
    global _SPCONV
    if _SPCONV is not None:
        return _SPCONV
    # spconv's modules ask torch.fx whether it is tracing, which logs a deprecation warning on
    # every call; that one logger is silenced (errors still show).
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    try:
        import spconv.pytorch as sp
        import spconv.pytorch.hash as sp_hash
        import spconv.pytorch.ops as sp_ops
    except ImportError as e:
        raise MissingDependencyError("spconv", "sparse", "spconv sparse convolutions") from e
    original = sp_ops.get_current_stream

    def current_stream() -> int:
        # spconv passes this to its kernels; 0 is the default stream, and CPU kernels ignore it.
        return original() if torch.cuda.is_available() and torch.cuda.is_initialized() else 0

    sp_ops.get_current_stream = current_stream
    sp_hash.get_current_stream = current_stream
    _SPCONV = sp
    return sp


def spconv_available() -> bool:
    try:
        load_spconv()
    except MissingDependencyError:
        return False
    return True


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the body with one intra-op torch thread (spconv's CPU kernels are wrong with more)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _resolve(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise UserInputError(
            f"unknown sparse backend {backend!r}; choose one of {', '.join(BACKENDS)}"
        )
    if backend == "auto":
        return "spconv" if spconv_available() else "torch"
    return backend


# --------------------------------------------------------------------------- sparse tensor


@dataclass
class SparseTensor:
    """Features on active voxels of a batch of grids.

    ``coords`` ``[N, 4]`` int32 rows (batch, x, y, z), unique; ``feats`` ``[N, C]``;
    ``spatial_shape`` the grid size (X, Y, Z) in voxels; ``batch_size`` the number of grids.
    Neighbour maps computed for these coords are cached and shared by :meth:`replace`.
    """

    coords: torch.Tensor  # [N, 4] int32
    feats: torch.Tensor  # [N, C]
    spatial_shape: tuple[int, int, int]
    batch_size: int
    cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.coords.ndim != 2 or self.coords.shape[1] != 4:
            raise UserInputError(
                f"sparse coords must be [N, 4] (batch, x, y, z), got {tuple(self.coords.shape)}"
            )
        if self.feats.ndim != 2 or self.feats.shape[0] != self.coords.shape[0]:
            raise UserInputError(
                f"sparse feats must be [N, C] with N = {self.coords.shape[0]}, "
                f"got {tuple(self.feats.shape)}"
            )
        self.spatial_shape = tuple(int(s) for s in self.spatial_shape)
        self.coords = self.coords.to(torch.int32).contiguous()  # spconv reads raw memory

    @classmethod
    def from_coords(
        cls,
        coords: torch.Tensor,
        feats: torch.Tensor | None,
        spatial_shape,
        batch_size: int | None = None,
        check: bool = True,
    ) -> SparseTensor:
        """Build from ``coords`` ``[N, 4]``; ``feats`` default to ones ``[N, 1]``. With ``check``,
        coords must be inside the grid and unique (a clear error otherwise)."""
        coords = torch.as_tensor(coords).to(torch.int32)
        if feats is None:
            feats = torch.ones(len(coords), 1, device=coords.device)
        if batch_size is None:
            batch_size = int(coords[:, 0].max()) + 1 if len(coords) else 1
        st = cls(coords, feats, tuple(spatial_shape), batch_size)
        if check and len(coords):
            hi = torch.tensor([batch_size, *st.spatial_shape], device=coords.device)
            if bool((coords < 0).any()) or bool((coords >= hi).any()):
                raise UserInputError(
                    f"voxel coordinates outside the grid {st.spatial_shape} (batch {batch_size})"
                )
            if len(torch.unique(st.keys())) != len(coords):
                raise UserInputError("duplicate voxel coordinates")
        return st

    @property
    def device(self) -> torch.device:
        return self.feats.device

    def __len__(self) -> int:
        return self.coords.shape[0]

    def replace(self, feats: torch.Tensor) -> SparseTensor:
        """Same voxels (and neighbour cache), new features ``[N, C']``."""
        return SparseTensor(self.coords, feats, self.spatial_shape, self.batch_size, self.cache)

    def select(self, keep: torch.Tensor) -> SparseTensor:
        """The voxels where ``keep`` ``[N]`` bool is true (a new cache)."""
        return SparseTensor(
            self.coords[keep], self.feats[keep], self.spatial_shape, self.batch_size
        )

    def keys(self, coords: torch.Tensor | None = None) -> torch.Tensor:
        """Packed int64 keys ``[N]`` of ``coords`` (default: own) in this grid; row-major."""
        c = (self.coords if coords is None else coords).long()
        X, Y, Z = self.spatial_shape
        return ((c[:, 0] * X + c[:, 1]) * Y + c[:, 2]) * Z + c[:, 3]

    def lookup(self, coords: torch.Tensor) -> torch.Tensor:
        """Row index ``[M]`` of each query voxel ``[M, 4]`` in this tensor, ``-1`` where inactive
        or outside the grid."""
        if "sorted" not in self.cache:
            k = self.keys()
            order = torch.argsort(k)
            self.cache["sorted"] = (k[order], order)
        sk, order = self.cache["sorted"]
        hi = torch.tensor([self.batch_size, *self.spatial_shape], device=coords.device)
        inside = ((coords >= 0) & (coords < hi)).all(1)
        q = self.keys(torch.where(inside[:, None], coords, torch.zeros_like(coords)))
        pos = torch.searchsorted(sk, q).clamp_max(max(len(sk) - 1, 0))
        found = inside & (sk[pos] == q) if len(sk) else torch.zeros_like(inside)
        return torch.where(found, order[pos], torch.full_like(pos, -1))

    def dense(self) -> torch.Tensor:
        """``[B, C, X, Y, Z]`` dense copy (zeros where inactive)."""
        out = self.feats.new_zeros(self.batch_size, self.feats.shape[1], *self.spatial_shape)
        c = self.coords.long()
        out[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = self.feats
        return out

    def sorted(self) -> SparseTensor:
        """Rows in key order (a canonical order for comparisons)."""
        order = torch.argsort(self.keys())
        return SparseTensor(
            self.coords[order], self.feats[order], self.spatial_shape, self.batch_size
        )


def batch_coords(coords: list) -> torch.Tensor:
    """Per-scene voxel coords (``[N_b, 3]`` tensors or arrays) -> one batch ``[sum N_b, 4]``
    int32 rows ``(b, x, y, z)``, scene ``b`` being the ``b``-th list entry."""
    parts = [torch.as_tensor(c).to(torch.int32).reshape(-1, 3) for c in coords]
    return torch.cat(
        [
            torch.cat([torch.full((len(c), 1), b, dtype=torch.int32), c], 1)
            for b, c in enumerate(parts)
        ]
    )


def _offsets(k: int, device) -> torch.Tensor:
    """``[k^3, 3]`` kernel offsets in (x, y, z) row-major order, centred for odd ``k``."""
    r = torch.arange(k, device=device) - (k // 2 if k % 2 else 0)
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)


def child_coords(coords: torch.Tensor) -> torch.Tensor:
    """The 8 children ``2q + o`` of every voxel ``q`` of ``coords`` ``[N, 4]`` -> ``[8 N, 4]``,
    parent-major, octant minor (``octant = 4 o_x + 2 o_y + o_z``)."""
    out = coords.repeat_interleave(8, 0)
    out[:, 1:] = out[:, 1:] * 2 + _offsets(2, coords.device).repeat(len(coords), 1).to(out.dtype)
    return out


def _to_spconv(x: SparseTensor):
    """spconv's tensor for ``x``. One base tensor (detached features) is cached per voxel set, so
    every submanifold layer on these voxels reuses the neighbour pairs spconv stored in its
    ``indice_dict`` (keyed by ``indice_key``) instead of rebuilding them."""
    sp = load_spconv()
    base = x.cache.get("spconv")
    if base is None:
        base = sp.SparseConvTensor(
            x.feats.detach().contiguous(), x.coords, list(x.spatial_shape), x.batch_size
        )
        x.cache["spconv"] = base
    return base.replace_feature(x.feats.contiguous())


def _keep_pairs(x: SparseTensor, y) -> None:
    """spconv stores a submanifold layer's neighbour pairs on its *output* tensor; copy them to
    the cached base tensor of ``x``'s voxels so the next layer on these voxels finds them."""
    if y.spatial_shape == list(x.spatial_shape) and "spconv" in x.cache:
        x.cache["spconv"].indice_dict.update(y.indice_dict)


class _SingleThreadSpconv(torch.autograd.Function):
    """Runs a spconv module on CPU with one torch thread in forward *and* backward (autograd's
    backward runs after the forward's context manager has exited, so it needs its own guard)."""

    @staticmethod
    def forward(ctx, module, x, feats, weight, bias=None):
        # build the inner graph only when a gradient will be asked for
        with torch.set_grad_enabled(any(ctx.needs_input_grad[2:])), single_thread():
            leaves = [
                t.detach().requires_grad_(t.requires_grad)
                for t in (feats, weight, bias)
                if t is not None
            ]
            module.weight = leaves[1]
            if bias is not None:
                module.bias = leaves[2]
            y = module(_to_spconv(x.replace(leaves[0])))
        _keep_pairs(x, y)
        ctx.graph = (y.features, leaves)
        ctx.mark_non_differentiable(y.indices)
        return y.features.detach(), y.indices, tuple(int(s) for s in y.spatial_shape)

    @staticmethod
    def backward(ctx, grad, _grad_coords, _grad_shape):
        out, leaves = ctx.graph
        del ctx.graph  # release the inner graph as soon as it has been used
        need = [t for t in leaves if t.requires_grad]
        with single_thread():
            grads = iter(torch.autograd.grad(out, need, grad, allow_unused=True) if need else ())
        res = [next(grads) if t.requires_grad else None for t in leaves]
        return (None, None, *res, *([None] * (3 - len(res))))


# --------------------------------------------------------------------------- layers


class _SparseConvBase(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, bias: bool, backend: str
    ):
        super().__init__()
        if backend not in BACKENDS:
            raise UserInputError(
                f"unknown sparse backend {backend!r}; choose one of {', '.join(BACKENDS)}"
            )
        self.in_channels, self.out_channels, self.kernel_size = (
            in_channels,
            out_channels,
            kernel_size,
        )
        self.backend = backend
        k = kernel_size
        # spconv's layout: [C_out, kx, ky, kz, C_in]
        self.weight = nn.Parameter(torch.empty(out_channels, k, k, k, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        fan_in = in_channels * k**3
        nn.init.uniform_(self.weight, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def _kernel(self) -> torch.Tensor:
        """``[k^3, C_in, C_out]`` in :func:`_offsets` order."""
        k = self.kernel_size
        return self.weight.reshape(self.out_channels, k**3, self.in_channels).permute(1, 2, 0)

    def _spconv_call(self, module_cls, x: SparseTensor, **kw) -> SparseTensor:
        m = module_cls(
            self.in_channels, self.out_channels, self.kernel_size, bias=self.bias is not None, **kw
        )
        del (
            m.weight
        )  # the spconv module is transient, outside the module tree: it uses our parameters
        if self.bias is not None:
            del m.bias
        if x.device.type != "cpu":
            m.weight = self.weight
            if self.bias is not None:
                m.bias = self.bias
            y = m(_to_spconv(x))
            _keep_pairs(x, y)
            return SparseTensor(y.indices, y.features, tuple(y.spatial_shape), x.batch_size)
        out, coords, shape = _SingleThreadSpconv.apply(m, x, x.feats, self.weight, self.bias)
        return SparseTensor(coords, out, shape, x.batch_size)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"backend={self.backend}"
        )


class SubMConv3d(_SparseConvBase):
    """Submanifold convolution, odd kernel, stride 1: ``out[p] = b + sum_d W[d] x[p + d]`` over
    active ``p`` and active neighbours ``p + d`` (``d`` in the centred k^3 window)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        bias: bool = True,
        backend: str = "auto",
    ):
        if kernel_size % 2 != 1:
            raise UserInputError("submanifold convolutions need an odd kernel size")
        super().__init__(in_channels, out_channels, kernel_size, bias, backend)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if _resolve(self.backend, x.device) == "spconv":
            sp = load_spconv()
            y = self._spconv_call(sp.SubMConv3d, x, indice_key=f"subm{self.kernel_size}")
            return x.replace(y.feats) if torch.equal(y.coords, x.coords) else y
        key = ("subm", self.kernel_size)
        if key not in x.cache:  # neighbour pairs per offset, reused by every layer on these voxels
            pairs = []
            for d in _offsets(self.kernel_size, x.device):
                q = x.coords.clone()
                q[:, 1:] += d.to(torch.int32)
                src = x.lookup(q)
                ok = src >= 0
                pairs.append((ok.nonzero()[:, 0], src[ok]))
            x.cache[key] = pairs
        W = self._kernel()
        out = x.feats.new_zeros(len(x), self.out_channels)
        for (dst, src), w in zip(x.cache[key], W, strict=True):
            if len(dst):  # accumulate in the features' dtype (autocast may give bf16 products)
                out = out.index_add(0, dst, (x.feats[src] @ w).to(out.dtype))
        if self.bias is not None:
            out = out + self.bias
        return x.replace(out)


class SparseDownsample(_SparseConvBase):
    """2 x 2 x 2 convolution, stride 2: ``out[q] = b + sum_o W[o] x[2q + o]`` over active
    children; the coarse grid is ``ceil(shape / 2)``."""

    def __init__(
        self, in_channels: int, out_channels: int, bias: bool = True, backend: str = "auto"
    ):
        super().__init__(in_channels, out_channels, 2, bias, backend)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if _resolve(self.backend, x.device) == "spconv":
            if any(s % 2 for s in x.spatial_shape):
                raise UserInputError(
                    f"the spconv backend downsamples even grids only, got {x.spatial_shape}"
                )
            sp = load_spconv()
            return self._spconv_call(sp.SparseConv3d, x, stride=2)
        shape = tuple((s + 1) // 2 for s in x.spatial_shape)
        parent = x.coords.clone()
        parent[:, 1:] = torch.div(parent[:, 1:], 2, rounding_mode="floor")
        octant = ((x.coords[:, 1:] % 2) * torch.tensor([4, 2, 1], device=x.device)).sum(1).long()
        coarse = SparseTensor(parent, x.feats[:, :0], shape, x.batch_size)
        uniq, inv = torch.unique(coarse.keys(), return_inverse=True)
        X, Y, Z = shape
        c = torch.stack([uniq // (X * Y * Z), uniq // (Y * Z) % X, uniq // Z % Y, uniq % Z], 1)
        W = self._kernel()  # [8, C_in, C_out]
        contrib = torch.bmm(x.feats[:, None, :], W[octant])[:, 0]  # [N, C_out]
        out = x.feats.new_zeros(len(uniq), self.out_channels).index_add(
            0, inv, contrib.to(x.feats.dtype)
        )
        if self.bias is not None:
            out = out + self.bias
        return SparseTensor(c, out, shape, x.batch_size)


class SparseUpsample(_SparseConvBase):
    """Generative 2 x 2 x 2 transposed convolution, stride 2: every active voxel ``q`` makes the 8
    children ``2q + o`` with features ``b + W[o] x[q]``. Children are ordered parent-major, octant
    minor (``child = 8 * parent_row + octant``), so ``parent_index = row // 8``."""

    def __init__(
        self, in_channels: int, out_channels: int, bias: bool = True, backend: str = "auto"
    ):
        super().__init__(in_channels, out_channels, 2, bias, backend)

    def forward(self, x: SparseTensor) -> SparseTensor:
        shape = tuple(2 * s for s in x.spatial_shape)
        if _resolve(self.backend, x.device) == "spconv":
            sp = load_spconv()
            y = self._spconv_call(sp.SparseConvTranspose3d, x, stride=2)
            y = SparseTensor(y.coords, y.feats, shape, x.batch_size)
            # restore the documented parent-major order
            want = child_coords(x.coords)
            idx = y.lookup(want)
            if bool((idx < 0).any()):
                raise RuntimeError("spconv's transposed convolution did not return all 8 children")
            return SparseTensor(want, y.feats[idx], shape, x.batch_size)
        W = self._kernel()  # [8, C_in, C_out]
        feats = torch.einsum("nc,kcd->nkd", x.feats, W).reshape(len(x) * 8, self.out_channels)
        if self.bias is not None:
            feats = feats + self.bias
        coords = child_coords(x.coords)
        return SparseTensor(coords, feats, shape, x.batch_size)


# --------------------------------------------------------------------------- blocks


class SparseLinear(nn.Linear):
    """Per-voxel linear layer."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(super().forward(x.feats))


class SparseResBlock(nn.Module):
    """LayerNorm -> SiLU -> SubM conv, twice, plus a skip (a linear map when widths differ).
    LayerNorm is per voxel, so a block's output does not depend on other scenes in the batch."""

    def __init__(self, channels: int, out_channels: int | None = None, backend: str = "auto"):
        super().__init__()
        out = out_channels or channels
        self.norm1, self.conv1 = (
            nn.LayerNorm(channels),
            SubMConv3d(channels, out, 3, backend=backend),
        )
        self.norm2, self.conv2 = nn.LayerNorm(out), SubMConv3d(out, out, 3, backend=backend)
        nn.init.zeros_(self.conv2.weight)
        self.skip = nn.Linear(channels, out) if out != channels else nn.Identity()

    def forward(self, x: SparseTensor) -> SparseTensor:
        h = self.conv1(x.replace(F.silu(self.norm1(x.feats))))
        h = self.conv2(h.replace(F.silu(self.norm2(h.feats))))
        return h.replace(h.feats + self.skip(x.feats))


def set_backend(module: nn.Module, backend: str) -> nn.Module:
    """Set the backend of every sparse convolution inside ``module``; returns it."""
    if backend not in BACKENDS:
        raise UserInputError(
            f"unknown sparse backend {backend!r}; choose one of {', '.join(BACKENDS)}"
        )
    for m in module.modules():
        if isinstance(m, _SparseConvBase):
            m.backend = backend
    return module
