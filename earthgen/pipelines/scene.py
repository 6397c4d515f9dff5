"""EarthScenePipeline: a semantic map, an aerial image, or nothing -> a 3D scene (voxels + 2DGS).

Stages (EarthCrafter's design, docs/scene.md):

1. **structure**: the structure flow (:class:`flows.StructureFlowDiT`) generates the coarse
   structure latent of a window (``W = 8 x`` its grid, in voxels), the structure VAE
   (:class:`vae.StructureVAE`) decodes it to the window's ``W^3`` voxels;
2. **texture**: the texture flow (:class:`flows.TextureFlowNet`) generates a texture latent on
   every voxel, the texture VAE (:class:`vae.TextureVAE`) decodes it to 2D Gaussian surfels.

**Large extents.** An area larger than one window is generated window by window (rows from south
to north, west to east) on a grid with ``overlap_m`` of overlap. Each window is conditioned on
what its neighbours already generated: the coarse cells of overlapping columns (structure) and
the latents of already textured voxels (texture) are pinned during sampling (inpainting by
replacement on the flow path, :func:`flows.solver.inpaint_callback`); every column is kept from
the one window whose core (the window less half the overlap on sides shared with a neighbour)
holds it. Working memory is that of one window whatever the area; only the outputs grow with it,
unless ``stream_to=`` writes each finished window to disk (:mod:`earthgen.scene_store`).

Frames: voxel ``(x, y, z)`` indices from the scene's south-west-bottom corner (x east, y north,
z up), ``voxel_size`` metres each; maps are north-up (row 0 is the northern edge) and cover the
scene. All windows share one vertical frame of ``W`` voxels (scenes with more relief than that are
clipped at the top).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from earthgen.classes import NUM_CLASSES
from earthgen.errors import UserInputError
from earthgen.scene_store import EMPTY_TOP, SceneStore

MAX_WINDOWS = 4096
DECODE_MARGIN = 4  # coarse cells of context around a window's core when decoding the structure
GROUND_RADIUS = 8  # columns: the ground under a building is the lowest free surface this near


@dataclass
class EarthSceneOutput(BaseOutput):
    """A generated scene.

    ``coords`` ``[N, 3]`` int32 voxel indices (x east, y north, z up) from ``origin``;
    ``colors`` ``[N, 3]`` uint8 voxel colours (opacity-weighted mean of the voxel's surfels);
    ``surfels``: ``means [M, 3]`` (metres in the frame ``origin`` is given in: voxel ``c`` spans
    ``origin + c * voxel_size`` to ``origin + (c + 1) * voxel_size``), ``quats [M, 4]`` (wxyz),
    ``scales [M, 3]``, ``opacities [M]``, ``colors [M, 3]`` in [0, 1], ``voxel [M]`` (row in
    ``coords``); ``height`` ``[Y, X]`` float32 surface height (metres above the scene's base,
    north-up rows, NaN for empty columns); ``windows`` the south-west corners (voxels) of the
    windows generated; ``seed`` unused by the pipeline (None; callers that draw a seed may set it).
    """

    coords: np.ndarray
    colors: np.ndarray
    surfels: dict
    voxel_size: float
    origin: np.ndarray
    height: np.ndarray
    windows: list
    seed: int | None = None


@dataclass
class StreamedSceneOutput(BaseOutput):
    """A generated scene streamed to disk (``stream_to=``): the fields of
    :class:`EarthSceneOutput`, with ``coords``, ``colors`` and ``surfels`` read back from
    ``store`` (:class:`earthgen.scene_store.SceneStore`, one chunk per window) on every access.
    Each access reads the whole scene into memory (15 bytes per voxel and 64 per surfel:
    0.2 + 3.1 GB for 1 km² at 1 m); exports read ``store`` chunk by chunk instead
    (:func:`earthgen.export3d.save_scene_store`)."""

    store: SceneStore
    voxel_size: float
    origin: np.ndarray
    height: np.ndarray
    windows: list
    seed: int | None = None

    @property
    def coords(self) -> np.ndarray:
        return self.store.load("coords")

    @property
    def colors(self) -> np.ndarray:
        return self.store.load("colors")

    @property
    def surfels(self) -> dict:
        return self.store.load("surfels")


def window_starts(n: int, window: int, overlap: int) -> list[int]:
    """Starts of the fewest windows of ``window`` cells covering ``[0, n)`` with exactly
    ``overlap`` cells shared by neighbours: a stride of ``window - overlap`` (whole coarse
    cells when both are). The last window may reach past ``n``; nothing is generated there but
    the coarse structure (1/512 of the voxels), so the work per window is that of the area it
    covers and the windows' total is the area plus the requested overlaps, no more."""
    if n <= window:
        return [0]
    stride = window - overlap
    return [i * stride for i in range(math.ceil((n - overlap) / stride))]


def core_cuts(starts: list[int], window: int, n: int) -> list[tuple[int, int]]:
    """Columns ``[lo, hi)`` (global) each window keeps along one axis: the borders are the
    middles of the overlaps, so every column ``0 .. n - 1`` is kept by exactly one window."""
    cuts = [0] + [(b + a + window) // 2 for a, b in zip(starts, starts[1:], strict=False)] + [n]
    return [(cuts[i], min(cuts[i + 1], n)) for i in range(len(starts))]


def coverage_ratio(n: int, window: int, overlap: int) -> float:
    """Cells of the scene that windows cover, counted once per window, over the cells needed
    with exactly ``overlap`` shared: ``sum |window & [0, n)| / (n + (count - 1) x overlap)``
    along one axis (1 = no extra work beyond the requested overlap)."""
    starts = window_starts(n, window, overlap)
    covered = sum(min(s + window, n) - s for s in starts)
    return covered / (n + (len(starts) - 1) * overlap)


def _ramp(starts: list[int], window: int, i: int, cell: int = 8) -> torch.Tensor:
    """Blend weights ``[window // cell]`` of window ``i``'s coarse cells along one axis: 1 inside,
    a linear ramp across the cells it shares with a neighbour (none at the scene's edges)."""
    G = window // cell
    k = torch.arange(G, dtype=torch.float32) + 0.5
    w = torch.ones(G)
    if i > 0:
        ov = (starts[i - 1] + window - starts[i]) // cell
        if ov > 0:
            w = torch.minimum(w, k / ov)
    if i < len(starts) - 1:
        ov = (starts[i] + window - starts[i + 1]) // cell
        if ov > 0:
            w = torch.minimum(w, (G - k) / ov)
    return w


def surface_height(coords: np.ndarray, nx: int, ny: int, voxel_size: float) -> np.ndarray:
    """Top of each column, metres above the base (``(z + 1) * voxel_size``), as a north-up map
    ``[ny, nx]`` of the voxels ``coords`` ``[N, 3]`` (x, y, z); NaN where a column is empty.
    Voxels outside ``nx x ny`` are ignored."""
    top = np.full(nx * ny, -1, np.int64)
    c = np.asarray(coords)
    inside = (c[:, 0] < nx) & (c[:, 1] < ny)
    np.maximum.at(top, c[inside, 1] * nx + c[inside, 0], c[inside, 2])
    top = top.reshape(ny, nx)[::-1]
    return np.where(top >= 0, (top + 1) * voxel_size, np.nan).astype(np.float32)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def fill_from_neighbours(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``values`` ``[X, Y]`` where ``valid`` (bool ``[X, Y]``, not all False), the rest filled
    ring by ring with the mean of their already valid 3x3 neighbours."""
    h, v = values.float()[None, None], valid.float()[None, None]
    k = torch.ones(1, 1, 3, 3)
    while bool((v == 0).any()):
        s, c = F.conv2d(h * v, k, padding=1), F.conv2d(v, k, padding=1)
        grow = (v == 0) & (c > 0)
        h = torch.where(grow, s / c.clamp_min(1), h)
        v = torch.where(grow, torch.ones_like(v), v)
    return h[0, 0]


def fill_columns(vox: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Terrain closure of a 2.5D scene on an ``X x Y`` grid of columns (``vox`` ``[N, 4]``
    (b, x, y, z) of one scene -> ``[N', 4]``):

    - every empty column gets a surface voxel at the mean height of its nearest non-empty columns
      (repeated 3x3 averaging outwards);
    - every column is made solid from its top down to just above its lowest 4-neighbour's top, so
      steps between columns have walls (no see-through gaps under overhanging tops).
    """
    if not len(vox):
        return vox
    X, Y = shape
    top = torch.full((X * Y,), -1.0)
    top.scatter_reduce_(0, (vox[:, 1].long() * Y + vox[:, 2].long()), vox[:, 3].float(), "amax")
    top = top.reshape(1, 1, X, Y)
    empty = top < 0
    h = fill_from_neighbours(torch.where(empty, 0.0, top)[0, 0], ~empty[0, 0])[None, None]
    t = torch.where(empty, h.round().clamp_min(0), top)[0, 0].long()  # [X, Y] top of every column
    pad = F.pad(t[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0].long()
    low = torch.stack([pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]]).amin(0)
    bottom = torch.minimum(low + 1, t)  # [X, Y] lowest voxel each column must have
    depth = t - bottom + 1
    xs, ys = torch.meshgrid(torch.arange(X), torch.arange(Y), indexing="ij")
    n = depth.flatten()
    cx, cy = xs.flatten().repeat_interleave(n), ys.flatten().repeat_interleave(n)
    start = torch.cumsum(n, 0) - n
    cz = (
        bottom.flatten().repeat_interleave(n)
        + torch.arange(int(n.sum()))
        - start.repeat_interleave(n)
    )
    walls = torch.stack([torch.zeros_like(cx), cx, cy, cz], 1).to(vox.dtype)
    both = torch.cat([vox, walls])
    key = (both[:, 1].long() * Y + both[:, 2].long()) * (int(both[:, 3].max()) + 1) + both[
        :, 3
    ].long()
    _, first = np.unique(key.numpy(), return_index=True)
    return both[torch.from_numpy(np.sort(first))]


def _as_semantic(semantic: Any) -> torch.Tensor:
    s = semantic.semantic if hasattr(semantic, "semantic") else semantic
    s = torch.as_tensor(np.asarray(s))
    if s.ndim != 2:
        raise UserInputError(f"semantic must be a class-id map [H, W], got shape {tuple(s.shape)}")
    if s.is_floating_point():
        raise UserInputError(
            "semantic must hold integer class ids (see earthgen.classes), got floats"
        )
    if int(s.min()) < 0 or int(s.max()) >= NUM_CLASSES:
        raise UserInputError(
            f"class ids must be in 0..{NUM_CLASSES - 1}, found {int(s.min())}..{int(s.max())}"
        )
    return F.one_hot(s.long(), NUM_CLASSES).permute(2, 0, 1).float()[None]  # [1, K, H, W]


def _as_image(image: Any) -> torch.Tensor:
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise UserInputError(f"image must be [H, W, 3] (RGB), got shape {a.shape}")
    a = a[..., :3]
    t = torch.from_numpy(a.astype(np.float32))
    if a.dtype == np.uint8:
        t = t / 255.0
    elif float(t.min()) < 0 or float(t.max()) > 1:
        raise UserInputError("a float image must be in [0, 1]")
    return t.permute(2, 0, 1)[None]  # [1, 3, H, W]


class EarthScenePipeline(DiffusionPipeline):
    """Condition -> structure -> texture -> 2DGS (see the module docstring).

    Components: ``structure_vae`` (:class:`vae.StructureVAE`), ``structure_flow``
    (:class:`flows.StructureFlowDiT`), ``texture_vae`` (:class:`vae.TextureVAE`),
    ``texture_flow`` (:class:`flows.TextureFlowNet`); ``voxel_size`` (metres) the models were
    trained at.
    """

    model_cpu_offload_seq = "structure_flow->structure_vae->texture_flow->texture_vae"

    def __init__(
        self, structure_vae, structure_flow, texture_vae, texture_flow, voxel_size: float = 1.0
    ):
        super().__init__()
        self.register_modules(
            structure_vae=structure_vae,
            structure_flow=structure_flow,
            texture_vae=texture_vae,
            texture_flow=texture_flow,
        )
        self.register_to_config(voxel_size=float(voxel_size))
        g = tuple(structure_flow.config.grid_size)
        if g[0] != g[1] or g[1] != g[2]:
            raise UserInputError(f"the structure flow's grid must be a cube, got {g}")
        if structure_flow.config.latent_channels != structure_vae.config.latent_channels:
            raise UserInputError(
                "the structure flow and the structure VAE have different latent widths"
            )
        if texture_flow.config.latent_channels != texture_vae.config.latent_channels:
            raise UserInputError(
                "the texture flow and the texture VAE have different latent widths"
            )

    @property
    def window(self) -> int:
        """Window side in voxels (8 x the structure flow's grid)."""
        return 8 * int(self.structure_flow.config.grid_size[0])

    @property
    def voxel_size(self) -> float:
        return float(self.config.voxel_size)

    # --- inputs ---------------------------------------------------------------------------------
    def check_inputs(
        self, semantic, image, gsd, size_m, overlap_m, steps, texture_steps, guidance_scale
    ):
        vs = self.voxel_size
        if semantic is None and image is None:
            if size_m is None:
                raise UserInputError(
                    "give a semantic map, an image, or size_m (metres) for an unconditional scene"
                )
        elif gsd is None:
            gsd = getattr(semantic, "gsd", None)
            if gsd is None:
                raise UserInputError("give gsd (metres per pixel of the semantic map / image)")
        if gsd is not None and not gsd > 0:
            raise UserInputError(f"gsd must be > 0 metres/pixel, got {gsd}")
        for name, v in (("num_inference_steps", steps), ("texture_steps", texture_steps)):
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise UserInputError(f"{name} must be a positive integer, got {v!r}")
        if guidance_scale < 0:
            raise UserInputError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if not 0 <= overlap_m <= self.window * vs / 2:
            raise UserInputError(
                f"overlap_m must be in [0, {self.window * vs / 2:g}] metres (half a window), "
                f"got {overlap_m}"
            )
        return gsd

    def _maps(self, semantic, image, gsd, size_m):
        """Conditions as ``[1, Ch, H, W]`` tensors and the scene's ``(nx, ny)`` in voxels."""
        sem = None if semantic is None else _as_semantic(semantic)
        img = None if image is None else _as_image(image)
        if sem is not None and img is not None and sem.shape[-2:] != img.shape[-2:]:
            raise UserInputError(
                f"the semantic map is {sem.shape[-1]}x{sem.shape[-2]} px but the image is "
                f"{img.shape[-1]}x{img.shape[-2]}: they must cover the same area at the same gsd"
            )
        ref = sem if sem is not None else img
        if ref is not None:
            h, w = ref.shape[-2:]
            ext = (w * gsd, h * gsd)
        else:
            sx, sy = (size_m, size_m) if np.isscalar(size_m) else size_m
            if not (sx > 0 and sy > 0):
                raise UserInputError(f"size_m must be > 0 metres, got {size_m}")
            ext = (float(sx), float(sy))
        nx, ny = (max(1, int(round(e / self.voxel_size))) for e in ext)
        return sem, img, nx, ny

    @staticmethod
    def _crop(
        m: torch.Tensor | None, nx: int, ny: int, x0: int, y0: int, w: int
    ) -> torch.Tensor | None:
        """North-up map over ``nx x ny`` voxels -> the window ``[x0, x0 + w) x [y0, y0 + w)``
        (edge-padded past the map)."""
        if m is None:
            return None
        H, W = m.shape[-2:]
        sx, sy = W / nx, H / ny  # pixels per voxel
        c0, c1 = int(round(x0 * sx)), int(round((x0 + w) * sx))
        r0, r1 = int(round(H - (y0 + w) * sy)), int(round(H - y0 * sy))
        pad = (max(0, -c0), max(0, c1 - W), max(0, -r0), max(0, r1 - H))
        if any(pad):
            m = F.pad(m, pad, mode="replicate")
            c0, c1, r0, r1 = c0 + pad[0], c1 + pad[0], r0 + pad[2], r1 + pad[2]
        return m[..., r0:r1, c0:c1]

    # --- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        semantic: Any = None,
        image: Any = None,
        gsd: float | None = None,
        size_m: float | tuple[float, float] | None = None,
        overlap_m: float = 16.0,
        num_inference_steps: int = 20,
        texture_steps: int | None = None,
        guidance_scale: float = 2.0,
        texture_guidance_scale: float | None = None,
        structure_threshold: float = 0.0,
        fill_holes: bool = True,
        heights: Any = None,
        height_base: Any = None,
        height_cap: Any = None,
        dem: Any = None,
        ortho_colors: bool = True,
        generator: torch.Generator | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end=None,
        stream_to: str | os.PathLike | None = None,
    ) -> EarthSceneOutput | StreamedSceneOutput | tuple:
        """Generate a scene.

        Args:
            semantic: class-id map ``[H, W]`` (north-up; ids of :mod:`earthgen.classes`) or a
                :class:`earthgen.geo.layout.Layout`.
            image: aerial image ``[H, W, 3]`` (uint8, or float in [0, 1]) of the same area (an
                orthophoto): it conditions both stages and, with ``ortho_colors``, gives roofs and
                ground their colour.
            gsd: metres per pixel of the maps (a Layout gives its own).
            size_m: scene size in metres (one number or ``(x, y)``) when no map is given.
            overlap_m: overlap of neighbouring windows, metres.
            num_inference_steps / texture_steps: flow solver steps (Heun) of the structure and
                texture stages (texture defaults to the same).
            guidance_scale / texture_guidance_scale: classifier-free guidance of each stage.
            structure_threshold: occupancy logit threshold of the structure VAE's decoder.
            fill_holes: give every empty column a surface voxel (:func:`fill_columns`).
            heights: building tops ``[H, W]`` metres above the ground (NaN where free), on the
                maps' grid (e.g. :func:`earthgen.geo.heights.height_map`): those columns are
                built from the generated ground up to these heights (within one voxel).
            height_base: ``[H, W]`` metres above ground where those buildings start (0 if None).
            height_cap: ``[H, W]`` the most metres above the ground the other columns may reach
                (NaN: no bound), e.g. 0 for roads and water: their lumps are cut to the ground.
            dem: ground elevation ``[H, W]`` metres on the maps' grid
                (:func:`earthgen.geo.heights.read_dem`): every column is raised by its elevation
                above the DEM's lowest point (``origin[2]``), walls close the steps.
            ortho_colors: with an ``image``, the top faces of columns take its colours (flat
                surfels at its resolution); the sides keep the texture model's colours.
            generator: a CPU ``torch.Generator`` (all noise comes from it).
            output_type: ``"np"`` (arrays; the only type).
            callback_on_step_end: ``fn(pipeline, step, t, kwargs) -> dict``, called after each
                solver step with ``kwargs = {"stage", "window", "latents"}`` (``window`` None for
                the structure stage, which samples the whole extent at once); return
                ``{"latents": x}`` to replace the state.
            stream_to: a folder: every window's voxels, colours and surfels are written there as
                soon as the window is done (:class:`earthgen.scene_store.SceneStore`, one file
                per window) instead of being kept, and a :class:`StreamedSceneOutput` is returned
                (the same scene, read back from the folder on demand). Peak memory is then that
                of a few windows whatever the extent; None (default) keeps the scene in memory.
        """
        if output_type != "np":
            raise UserInputError(f"output_type must be 'np', got {output_type!r}")
        gsd = self.check_inputs(
            semantic,
            image,
            gsd,
            size_m,
            overlap_m,
            num_inference_steps,
            texture_steps,
            guidance_scale,
        )
        sem, img, nx, ny = self._maps(semantic, image, gsd, size_m)
        store = None if stream_to is None else SceneStore(stream_to, (nx, ny))
        vs, W = self.voxel_size, self.window
        ov = int(round(overlap_m / vs / 8)) * 8  # whole coarse cells
        xs, ys = window_starts(nx, W, ov), window_starts(ny, W, ov)
        if len(xs) * len(ys) > MAX_WINDOWS:
            raise UserInputError(
                f"{nx * vs:g} x {ny * vs:g} m needs {len(xs) * len(ys)} windows; the limit is "
                f"{MAX_WINDOWS}"
            )
        ref = sem if sem is not None else img
        hgrid = self._column_map(heights, "heights", ref, nx, ny)
        bgrid = self._column_map(height_base, "height_base", ref, nx, ny)
        cgrid = self._column_map(height_cap, "height_cap", ref, nx, ny)
        dgrid = self._column_map(dem, "dem", ref, nx, ny)
        if hgrid is not None and bgrid is None:
            bgrid = torch.zeros_like(hgrid)
        texture_steps = texture_steps or num_inference_steps
        tg = guidance_scale if texture_guidance_scale is None else texture_guidance_scale
        NY = ys[-1] + W  # generated extent north (voxels), cropped to ny at the end
        windows = [(x0, y0) for y0 in ys for x0 in xs]
        cx, cy = core_cuts(xs, W, nx), core_cuts(ys, W, ny)
        cores = {}  # window index -> (x0, y0, x1, y1) global columns it keeps
        for wi, (x0, y0) in enumerate(windows):
            (ax, bx), (ay, by) = cx[xs.index(x0)], cy[ys.index(y0)]
            cores[wi] = (ax, ay, bx, by)
        # the windows whose extent reaches into each core: who needs its voxels and texture latents
        users: dict[int, list[int]] = {}
        for j in cores:  # neighbours only: an overlap is less than half a window
            jx, jy = j % len(xs), j // len(xs)
            users[j] = [
                b * len(xs) + a
                for b in range(max(jy - 2, 0), min(jy + 3, len(ys)))
                for a in range(max(jx - 2, 0), min(jx + 3, len(xs)))
                if _overlaps(cores[j], (xs[a], ys[b], xs[a] + W, ys[b] + W))
            ]
        total = num_inference_steps + texture_steps * len(
            windows
        )  # solver steps: whole extent, windows
        ortho = img[0].permute(1, 2, 0) if (img is not None and ortho_colors) else None  # [H, W, 3]
        with self.progress_bar(total=total) as bar:
            # 1. coarse structure of the whole extent at once, windows' velocities blended
            canvas = self._sample_structure(
                sem,
                img,
                nx,
                ny,
                xs,
                ys,
                num_inference_steps,
                guidance_scale,
                generator,
                callback_on_step_end,
                bar,
            )
            # 2-3. per window: fine voxels of the cores it touches (decoded once, lazily), then
            # texture, pinned to the latents of voxels already textured by earlier windows
            fine: dict[int, torch.Tensor] = {}  # core -> kept voxels [n, 3] (global)
            tex: dict[
                int, tuple[torch.Tensor, torch.Tensor]
            ] = {}  # window -> (sorted keys, latents)
            results = []  # in memory: each window's (coords, colors, surfels)
            for wi, (x0, y0) in enumerate(windows):
                box = (x0, y0, x0 + W, y0 + W)
                parts = []
                for j in cores:
                    if wi in users[j]:
                        if j not in fine:
                            fine[j] = self._decode_region(
                                canvas,
                                cores[j],
                                structure_threshold,
                                fill_holes,
                                hgrid,
                                bgrid,
                                cgrid,
                            )
                        parts.append(fine[j])
                g = torch.cat(parts) if parts else torch.zeros(0, 3, dtype=torch.long)
                g = g[(g[:, 0] >= x0) & (g[:, 0] < x0 + W) & (g[:, 1] >= y0) & (g[:, 1] < y0 + W)]
                if len(g):
                    vox = torch.cat(
                        [torch.zeros(len(g), 1, dtype=torch.long), g - torch.tensor([x0, y0, 0])], 1
                    ).int()  # [n, 4] (b, x, y, z) in the window
                    zdim = self._zdim(g)
                    lat, keys, keep = self._texture_window(
                        g,
                        vox,
                        zdim,
                        wi,
                        box,
                        cores[wi],
                        sem,
                        img,
                        nx,
                        ny,
                        NY,
                        texture_steps,
                        tg,
                        generator,
                        {j: tex[j] for j in tex if wi in users[j]},
                        callback_on_step_end,
                        bar,
                    )
                    surf = self._decode_texture(vox, lat, x0, y0, zdim)
                    tops = None
                    if ortho is not None:
                        surf, tops = self._ortho_surfels(surf, keep, g, ortho, nx, ny)
                    kept = self._window_result(g, surf, keep, tops)
                    if store is not None:  # to disk now: memory stays that of a few windows
                        store.add(*kept, box=cores[wi])
                    else:
                        results.append(kept)
                    del surf
                    order = torch.argsort(keys[keep])
                    tex[wi] = (keys[keep][order], lat[keep][order].cpu())
                # forget what no later window needs: memory stays that of a few windows
                for j in [j for j in fine if max(users[j]) <= wi]:
                    del fine[j]
                for j in [j for j in tex if max(users[j]) <= wi]:
                    del tex[j]
                if not len(g):
                    bar.update(texture_steps)
        if store is not None:
            origin = np.zeros(3)
            if dgrid is not None:
                origin[2] += self._raise_store_on_dem(store, dgrid)
            out = StreamedSceneOutput(
                store=store,
                voxel_size=vs,
                origin=origin,
                height=store.height(vs),
                windows=windows,
            )
            return out if return_dict else tuple(out.values())
        out = self._assemble(results, nx, ny, windows)
        if dgrid is not None:
            out = self._raise_on_dem(out, dgrid)
        return out if return_dict else tuple(out.values())

    def _column_map(
        self, m: Any, name: str, ref: torch.Tensor | None, nx: int, ny: int
    ) -> torch.Tensor | None:
        """A north-up map ``[H, W]`` of the maps' grid -> ``[nx, ny]`` per voxel column (x east,
        y north; nearest pixel at the column's centre)."""
        if m is None:
            return None
        a = torch.as_tensor(np.asarray(m, dtype=np.float32))
        if a.ndim != 2:
            raise UserInputError(
                f"{name} must be a map [H, W] in metres, got shape {tuple(a.shape)}"
            )
        if ref is None:
            raise UserInputError(f"{name} needs a semantic map or an image: it lies on their grid")
        if tuple(a.shape) != tuple(ref.shape[-2:]):
            raise UserInputError(
                f"{name} is {a.shape[1]}x{a.shape[0]} px but the maps are "
                f"{ref.shape[-1]}x{ref.shape[-2]}: it must be on their grid"
            )
        nan_ok = name in ("heights", "height_cap")
        if bool(torch.isinf(a).any()) or (not nan_ok and bool(torch.isnan(a).any())):
            raise UserInputError(
                f"{name} holds non-finite values"
                + (" (NaN is allowed: free columns)" if nan_ok else "")
            )
        if bool((a[~torch.isnan(a)] < 0).any()) and name != "dem":
            raise UserInputError(f"{name} must be >= 0 metres above the ground")
        H, Wd = a.shape
        r = ((H - (torch.arange(ny) + 0.5) * H / ny).long()).clamp(
            0, H - 1
        )  # row of column y (north-up)
        c = ((torch.arange(nx) + 0.5) * Wd / nx).long().clamp(0, Wd - 1)
        return a[r][:, c].T.contiguous()  # [nx, ny]

    def _zdim(self, g: torch.Tensor) -> int:
        """Vertical size of a window's voxel frame: the window, or more for taller buildings."""
        top = int(g[:, 2].max()) + 1 if len(g) else 0
        return max(self.window, -(-top // 8) * 8)

    def _sample_structure(
        self, sem, img, nx, ny, xs, ys, steps, guidance, generator, cb, bar, batch: int = 8
    ) -> torch.Tensor:
        """Coarse structure of the whole extent ``[1 + C, X', Y', G]`` (VAE units): one flow
        sample on the extent's coarse grid whose velocity at every step is the blend of the
        windows' velocities (linear ramps across overlaps), so neighbouring windows agree
        everywhere and no border is a seam. Cost: windows x steps, as window by window."""
        from flows.solver import ODESolver
        from flows.structure import guided_velocity

        model, W = self.structure_flow, self.window
        G = W // 8
        device = self._execution_device
        shape = (1, model.channels, (xs[-1] + W) // 8, (ys[-1] + W) // 8, G)
        x0 = torch.randn(shape, generator=generator).to(device)
        wins = [(i, j) for j in range(len(ys)) for i in range(len(xs))]
        ws = [
            (_ramp(xs, W, i)[:, None] * _ramp(ys, W, j)[None, :]).to(device)[None, None, :, :, None]
            for i, j in wins
        ]  # [1, 1, G, G, 1] each
        norm = torch.zeros(shape[2:4], device=device)
        for (i, j), w in zip(wins, ws, strict=True):
            norm[xs[i] // 8 : xs[i] // 8 + G, ys[j] // 8 : ys[j] // 8 + G] += w[0, 0, :, :, 0]
        norm = norm[None, None, :, :, None]

        def crops(m, sel):
            if m is None:
                return None
            return torch.cat([self._crop(m, nx, ny, xs[i], ys[j], W) for i, j in sel]).to(device)

        def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = torch.zeros_like(x)
            for b in range(0, len(wins), batch):
                sel = wins[b : b + batch]
                xb = torch.cat(
                    [
                        x[:, :, xs[i] // 8 : xs[i] // 8 + G, ys[j] // 8 : ys[j] // 8 + G]
                        for i, j in sel
                    ]
                )
                vb = guided_velocity(
                    model, xb, t[:1].expand(len(sel)), crops(sem, sel), crops(img, sel), guidance
                )
                for k, (i, j) in enumerate(sel):
                    out[:, :, xs[i] // 8 : xs[i] // 8 + G, ys[j] // 8 : ys[j] // 8 + G] += (
                        vb[k : k + 1] * ws[b + k]
                    )
            return out / norm

        user = self._user_callback(cb, "structure", None, bar)
        out = ODESolver("heun").sample(v, x0, steps, callback=user)
        out[:, 1:] *= float(model.config.latent_scale)
        return out[0].cpu()

    def _decode_region(
        self,
        canvas: torch.Tensor,
        core: tuple[int, int, int, int],
        threshold: float,
        fill_holes: bool,
        heights: torch.Tensor | None = None,
        base: torch.Tensor | None = None,
        caps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fine voxels ``[n, 3]`` (global) of the columns ``core = (x0, y0, x1, y1)``, decoded
        from the coarse canvas around them with a margin of ``DECODE_MARGIN`` coarse cells (so the
        decoder sees across window borders); with ``heights`` (``[X, Y]`` metres, NaN free) those
        columns are rebuilt from the ground (:func:`build_heights`)."""
        from flows.structure import grid_to_structure
        from vae.sparse import SparseTensor

        m = DECODE_MARGIN
        x0, y0, x1, y1 = core
        cx0, cy0 = max(x0 // 8 - m, 0), max(y0 // 8 - m, 0)
        cx1, cy1 = min(-(-x1 // 8) + m, canvas.shape[1]), min(-(-y1 // 8) + m, canvas.shape[2])
        crop = canvas[:, cx0:cx1, cy0:cy1][None]
        coords, feats = grid_to_structure(crop)
        if not len(coords):
            return torch.zeros(0, 3, dtype=torch.long)
        device = self._execution_device
        lat = SparseTensor.from_coords(
            coords.to(device), feats.to(device), tuple(crop.shape[2:]), 1, check=False
        )
        vox = self.structure_vae.decode(lat, threshold=threshold)["occupancy"].coords.cpu()
        if fill_holes:
            vox = fill_columns(vox, (8 * (cx1 - cx0), 8 * (cy1 - cy0)))
        g = vox[:, 1:].long() + torch.tensor([8 * cx0, 8 * cy0, 0])
        if heights is not None or caps is not None:
            ref = heights if heights is not None else caps
            X, Y = ref.shape
            region = (8 * cx0, 8 * cy0, min(8 * cx1, X), min(8 * cy1, Y))
            h = heights if heights is not None else torch.full_like(caps, float("nan"))
            g = build_heights(g, h, base, region, self.voxel_size, caps)
        return g[(g[:, 0] >= x0) & (g[:, 0] < x1) & (g[:, 1] >= y0) & (g[:, 1] < y1)]

    def _texture_window(
        self,
        g,
        vox,
        zdim,
        wi,
        box,
        core,
        sem,
        img,
        nx,
        ny,
        NY,
        steps,
        guidance,
        generator,
        tex,
        cb,
        bar=None,
    ):
        """Texture latents ``[n, C]`` of window ``wi``'s voxels ``g`` ``[n, 3]`` (global; ``vox``
        ``[n, 4]`` the same in the window's frame of ``zdim`` voxels up), pinned
        where earlier windows (``tex``: window -> sorted voxel keys, latents) textured them; returns
        ``(latents, keys, keep)`` with ``keep`` the voxels of the window's own core."""
        x0, y0 = box[0], box[1]
        W = self.window
        s_w, i_w = self._crop(sem, nx, ny, x0, y0, W), self._crop(img, nx, ny, x0, y0, W)
        Z = 4096  # key = (x * NY + y) * Z + z; no scene is that tall
        keys = (g[:, 0] * NY + g[:, 1]) * Z + g[:, 2]
        have = torch.zeros(len(g), dtype=torch.bool)
        known = torch.zeros(len(g), self.texture_flow.config.latent_channels)
        for kj, lj in tex.values():
            if not len(kj):
                continue
            pos = torch.searchsorted(kj, keys).clamp_max(len(kj) - 1)
            hit = (kj[pos] == keys) & ~have
            known[hit] = lj[pos[hit]]
            have |= hit
        lat = self._sample_texture(
            vox,
            s_w,
            i_w,
            steps,
            guidance,
            generator,
            known if bool(have.any()) else None,
            have,
            wi,
            cb,
            zdim,
            bar,
        )
        c = core
        keep = (g[:, 0] >= c[0]) & (g[:, 0] < c[2]) & (g[:, 1] >= c[1]) & (g[:, 1] < c[3])
        return lat, keys, keep

    def _sample_texture(
        self, vox, sem, img, steps, guidance, generator, known, have, wi, cb, zdim=None, bar=None
    ):
        from flows.texture import sample_texture
        from vae.sparse import SparseTensor

        W = self.window
        device = self._execution_device
        x = SparseTensor.from_coords(vox.to(device), None, (W, W, zdim or W), 1, check=False)
        return sample_texture(
            self.texture_flow,
            x,
            semantic=None if sem is None else sem.to(device),
            image=None if img is None else img.to(device),
            steps=steps,
            guidance=guidance,
            generator=generator,
            known=known,
            known_mask=have,
            callback=self._user_callback(cb, "texture", wi, bar),
        ).cpu()

    def _decode_texture(
        self, vox: torch.Tensor, lat: torch.Tensor, x0: int, y0: int, zdim: int | None = None
    ) -> dict:
        from vae.sparse import SparseTensor

        W, vs = self.window, self.voxel_size
        device = self._execution_device
        x = SparseTensor.from_coords(
            vox.to(device), lat.to(device), (W, W, zdim or W), 1, check=False
        )
        g = self.texture_vae.decode(x, vs, (x0 * vs, y0 * vs, 0.0))
        return {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in g.items()}

    def _ortho_surfels(
        self, surf: dict, keep: torch.Tensor, g: torch.Tensor, ortho: torch.Tensor, nx: int, ny: int
    ) -> tuple[dict, tuple[torch.Tensor, torch.Tensor]]:
        """Top faces from the orthophoto: the kept column tops get flat surfels on their upper face
        (``s x s`` per voxel, ``s`` = voxel size / image GSD, 1..4) coloured by the image at their
        centre, and replace the model's surfels above the middle of those voxels. Returns the
        surfels with these appended (``voxel`` rows as before) and
        ``(rows [T], colours [T, 3])``: the top voxels and their mean image colour."""
        vs = self.voxel_size
        H, Wd = ortho.shape[:2]
        s = int(min(4, max(1, round(Wd / nx))))
        key = g[:, 0] * (int(g[:, 1].max()) + 1) + g[:, 1]
        top = torch.full((int(key.max()) + 1,), -1, dtype=torch.long).scatter_reduce(
            0, key, g[:, 2], "amax"
        )
        is_top = keep & (g[:, 2] == top[key])
        rows = torch.nonzero(is_top)[:, 0]  # [T] voxel rows with an ortho face
        sub = (torch.arange(s, dtype=torch.float32) + 0.5) / s
        oy, ox = torch.meshgrid(sub, sub, indexing="ij")
        ox, oy = ox.flatten(), oy.flatten()  # [s^2] offsets in a voxel
        gx = (g[rows, 0, None].float() + ox) * vs  # [T, s^2] metres east
        gy = (g[rows, 1, None].float() + oy) * vs
        gz = (g[rows, 2, None].float() + 1.0) * vs + 0.01 * vs
        # image pixel at each surfel centre (north-up), bilinear
        px = gx / (nx * vs) * 2 - 1
        py = 1 - gy / (ny * vs) * 2
        grid = torch.stack([px, py], -1)[None]  # [1, T, s^2, 2]
        col = (
            F.grid_sample(
                ortho.permute(2, 0, 1)[None].float(),
                grid,
                mode="bilinear",
                padding_mode="border",
                align_corners=False,
            )[0]
            .permute(1, 2, 0)
            .reshape(-1, 3)
        )
        m = len(col)
        step = vs / s
        ortho_s = {
            "means": torch.stack([gx.flatten(), gy.flatten(), gz.expand_as(gx).flatten()], -1),
            "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(m, 4).clone(),
            "scales": torch.tensor([0.5 * step, 0.5 * step, 1e-3 * step]).expand(m, 3).clone(),
            "opacities": torch.ones(m),
            "colors": col.clamp(0, 1),
            "voxel": rows.repeat_interleave(s * s),
        }
        # the model's surfels above the middle of their column's top voxel drew its roof: the image
        # replaces them
        mid = (top[key[surf["voxel"]]].float() + 0.5) * vs
        roof = keep[surf["voxel"]] & (surf["means"][:, 2] > mid)
        surf = {k: v[~roof] for k, v in surf.items()}
        # under them, one opaque surfel per face in its mean colour: nothing shows through the gaps
        mean_col = col.reshape(len(rows), s * s, 3).mean(1).clamp(0, 1)
        t = len(rows)
        under = {
            "means": torch.stack(
                [
                    (g[rows, 0].float() + 0.5) * vs,
                    (g[rows, 1].float() + 0.5) * vs,
                    (g[rows, 2].float() + 1.0) * vs + 0.005 * vs,
                ],
                -1,
            ),
            "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(t, 4).clone(),
            "scales": torch.tensor([0.6 * vs, 0.6 * vs, 1e-3 * vs]).expand(t, 3).clone(),
            "opacities": torch.ones(t),
            "colors": mean_col,
            "voxel": rows,
        }
        merged = {
            k: torch.cat([surf[k], ortho_s[k].to(surf[k].dtype), under[k].to(surf[k].dtype)])
            for k in surf
        }
        return merged, (rows, mean_col)

    def _user_callback(self, cb, stage: str, wi: int | None, bar=None):
        """The solver's callback: advances the progress bar, then calls the user's ``cb``."""
        if cb is None and bar is None:
            return None

        def fn(step: int, t: float, x: torch.Tensor):
            if bar is not None:
                bar.update()
            if cb is None:
                return None
            r = cb(self, step, t, {"stage": stage, "window": wi, "latents": x})
            return r.get("latents") if isinstance(r, dict) else None

        return fn

    @staticmethod
    def _window_result(
        g: torch.Tensor, surf: dict, keep: torch.Tensor, tops: tuple | None
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """What a window keeps, as arrays: ``coords`` ``[n, 3]`` int32 (its core's voxels
        ``g[keep]``), ``colors`` ``[n, 3]`` uint8 (opacity-weighted mean of each voxel's surfels,
        the orthophoto's colour on column tops ``tops``) and its surfels (``voxel`` int64 rows
        into ``coords``). A voxel's colour depends only on its own surfels: windows are
        independent."""
        n = int(keep.sum())
        row = torch.full((len(keep),), -1, dtype=torch.long)
        row[keep] = torch.arange(n)
        m = keep[surf["voxel"]]  # surfels of the kept voxels
        out = {k: surf[k][m].numpy() for k in ("means", "quats", "scales", "opacities", "colors")}
        out["voxel"] = row[surf["voxel"][m]].numpy()
        w = out["opacities"][:, None]
        num = np.zeros((n, 3))
        den = np.zeros((n, 1))
        np.add.at(num, out["voxel"], out["colors"] * w)
        np.add.at(den, out["voxel"], w)
        rgb = np.clip(num / np.maximum(den, 1e-6), 0, 1)
        if tops is not None:  # column tops: the orthophoto's colour
            rgb[row[tops[0]].numpy()] = tops[1].numpy()
        colors = (rgb * 255 + 0.5).astype(np.uint8)
        return g[keep].numpy().astype(np.int32).reshape(-1, 3), colors, out

    def _assemble(self, parts: list, nx: int, ny: int, windows: list) -> EarthSceneOutput:
        """The windows' results (:meth:`_window_result`, in window order) as one output."""
        vs = self.voxel_size
        if parts:
            base = np.cumsum([0] + [len(c) for c, _, _ in parts[:-1]])
            c = np.concatenate([c for c, _, _ in parts])
            colors = np.concatenate([col for _, col, _ in parts])
            surf = {
                k: np.concatenate(
                    [
                        s[k] + b if k == "voxel" else s[k]
                        for (_, _, s), b in zip(parts, base, strict=True)
                    ]
                )
                for k in ("means", "quats", "scales", "opacities", "colors", "voxel")
            }
        else:
            c, colors = np.zeros((0, 3), np.int32), np.zeros((0, 3), np.uint8)
            surf = {
                k: torch.zeros(0).numpy()
                for k in ("means", "quats", "scales", "opacities", "colors", "voxel")
            }
        return EarthSceneOutput(
            coords=c,
            colors=colors,
            surfels=surf,
            voxel_size=vs,
            origin=np.zeros(3),
            height=surface_height(c, nx, ny, vs),
            windows=windows,
        )

    def _raise_on_dem(self, out: EarthSceneOutput, dem: torch.Tensor) -> EarthSceneOutput:
        """Raise every column by the DEM's elevation above its lowest point (``dem`` ``[X, Y]``
        metres); walls close the new steps (each column reaches down to just above its lowest
        neighbour, the added voxels copy the surfels of the column's lowest voxel). ``origin[2]``
        becomes the DEM's lowest elevation, so ``origin + local`` is metres above the datum."""
        vs = self.voxel_size
        lo, dz = _dem_steps(dem, vs)
        c = out.coords.astype(np.int64)
        X, Y = dz.shape
        if not len(c):
            return out
        col = c[:, 0] * Y + c[:, 1]
        top = np.full(X * Y, -1, np.int64)  # column tops and bottoms before the shift
        np.maximum.at(top, col, c[:, 2])
        bot = np.full(X * Y, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(bot, col, c[:, 2])
        add, bot = _dem_walls(top.reshape(X, Y), bot.reshape(X, Y), dz)
        shift = dz[c[:, 0], c[:, 1]]
        c[:, 2] += shift
        surf = dict(out.surfels)
        means = surf["means"].copy()
        if len(means):  # surfels in the output frame: metres above the datum (origin[2] = lo)
            means[:, 2] += shift[surf["voxel"]] * vs + lo
        surf["means"] = means
        cols = np.nonzero(add > 0)[0]
        if len(cols):
            src, new, extra = _wall_voxels(c, col, cols, add, bot, surf, vs)
            extra["voxel"] += len(c)
            c = np.concatenate([c, new])
            colors = np.concatenate([out.colors, out.colors[src]])
            surf = {k: np.concatenate([surf[k], extra[k]]) for k in surf}
        else:
            colors = out.colors
        c = c.astype(np.int32)
        ny, nx = out.height.shape
        origin = np.asarray(out.origin, dtype=np.float64).copy()
        origin[2] += lo
        return EarthSceneOutput(
            coords=c,
            colors=colors,
            surfels=surf,
            voxel_size=vs,
            origin=origin,
            height=surface_height(c, nx, ny, vs),
            windows=out.windows,
            seed=out.seed,
        )

    def _raise_store_on_dem(self, store: SceneStore, dem: torch.Tensor) -> float:
        """:meth:`_raise_on_dem` on a streamed scene, one chunk at a time; returns the DEM's lowest
        elevation (metres, to add to ``origin[2]``; 0 for an empty scene). The closure needs only
        the store's ``[X, Y]`` column tops and bottoms. Each window's chunk is raised in place;
        the wall voxels added under the columns go into one chunk per column of windows, ordered
        as the in-memory output orders them (by column ``x * Y + y``), so the scene read back is
        the in-memory one, array for array."""
        vs = self.voxel_size
        lo, dz = _dem_steps(dem, vs)
        X, Y = dz.shape
        full = store.top != EMPTY_TOP
        if not full.any():
            return 0.0
        top = np.where(full, store.top, -1).astype(np.int64)
        bot = np.where(full, store.bottom, np.iinfo(np.int64).max).astype(np.int64)
        add, bot = _dem_walls(top, bot, dz)
        windows = list(range(len(store)))
        for i in windows:
            ch = store.read(i)
            c, colors, surf = ch["coords"].astype(np.int64), ch["colors"], ch["surfels"]
            shift = dz[c[:, 0], c[:, 1]]
            c[:, 2] += shift
            surf["means"] = surf["means"].copy()
            surf["means"][:, 2] += shift[surf["voxel"]] * vs + lo  # metres above the datum
            col = c[:, 0] * Y + c[:, 1]
            cols = np.unique(col[add[col] > 0])
            if len(cols):
                src, new, extra = _wall_voxels(c, col, cols, add, bot, surf, vs)
                np.savez(
                    store.folder / f"add_{i}.npz",
                    coords=new,
                    colors=colors[src],
                    col=np.repeat(cols, add[cols]),
                    **{"s_" + k: v for k, v in extra.items()},
                )
            store.replace(i, c, colors, surf)
        # the added voxels, one chunk per column of windows, west to east, by column x * Y + y
        strips: dict[tuple[int, int], list[int]] = {}
        for i in windows:
            strips.setdefault((store.chunks[i].box[0], store.chunks[i].box[2]), []).append(i)
        for (x0, x1), members in sorted(strips.items()):
            parts = []
            for i in members:
                f = store.folder / f"add_{i}.npz"
                if f.exists():
                    with np.load(f) as z:
                        parts.append({k: z[k] for k in z.files})
                    f.unlink()
            if not parts:
                continue
            base = np.cumsum([0] + [len(p["coords"]) for p in parts[:-1]])
            cat = {
                k: np.concatenate(
                    [p[k] + b if k == "s_voxel" else p[k] for p, b in zip(parts, base, strict=True)]
                )
                for k in parts[0]
            }
            perm = np.argsort(cat["col"], kind="stable")  # new row -> old row
            rank = np.empty_like(perm)
            rank[perm] = np.arange(len(perm))  # old row -> new row
            sv = rank[cat["s_voxel"]]
            sorder = np.argsort(sv, kind="stable")
            surf = {k: cat["s_" + k][sorder] for k in ("means", "quats", "scales", "opacities")}
            surf["colors"] = cat["s_colors"][sorder]
            surf["voxel"] = sv[sorder]
            store.add(cat["coords"][perm], cat["colors"][perm], surf, (x0, 0, x1, Y), window=False)
        return lo


def _dem_steps(dem: torch.Tensor, voxel_size: float) -> tuple[float, np.ndarray]:
    """The DEM's lowest elevation (metres) and each column's rise above it ``[X, Y]`` (voxels)."""
    d = dem.numpy().astype(np.float64)
    lo = float(d.min())
    return lo, np.rint((d - lo) / voxel_size).astype(np.int64)


def _dem_walls(top: np.ndarray, bot: np.ndarray, dz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The walls that close the steps of columns raised by ``dz`` ``[X, Y]`` voxels: ``top`` /
    ``bot`` ``[X, Y]`` int64 each column's highest / lowest voxel before the raise (-1 / int64
    max where empty). Each column reaches down to just above its lowest neighbour's top. Returns
    the voxels to add under each column ``[X * Y]`` and the columns' lowest voxel after the raise
    ``[X * Y]`` (flat index ``x * Y + y``)."""
    big = np.iinfo(np.int64).max
    full = top >= 0
    top = np.where(full, top + dz, -1)
    bot = np.where(full, bot + dz, big)
    pad = np.pad(np.where(full, top, big // 2), 1, mode="edge")
    low = np.minimum.reduce([pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]])
    need = np.where(full, np.minimum(low + 1, top), bot)
    return np.clip(bot - need, 0, None).ravel(), bot.ravel()


def _wall_voxels(
    c: np.ndarray,
    col: np.ndarray,
    cols: np.ndarray,
    add: np.ndarray,
    bot: np.ndarray,
    surf: dict,
    vs: float,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The voxels that close the walls of raised columns: ``add[k]`` copies of column ``k``'s
    lowest voxel stacked under it, for the columns ``cols``. ``c`` ``[N, 3]`` voxels and ``col``
    ``[N]`` their column (``x * Y + y``), ``bot`` ``[X * Y]`` each column's lowest ``z``,
    ``surf`` the voxels' surfels. Returns the source row of each new voxel ``[K]``, the new voxels
    ``[K, 3]`` and their surfels (copies of the source's, moved down; ``voxel`` = row among the
    new voxels)."""
    lowest = np.full(len(bot), -1, np.int64)  # the lowest voxel of each column: its row in c
    is_low = c[:, 2] == bot[col]
    lowest[col[is_low]] = np.nonzero(is_low)[0]
    n_add = add[cols]
    src = np.repeat(lowest[cols], n_add)
    depth = np.arange(int(n_add.sum())) - np.repeat(np.cumsum(n_add) - n_add, n_add) + 1
    new = c[src].copy()
    new[:, 2] -= depth
    order = np.argsort(surf["voxel"], kind="stable")
    sv = surf["voxel"][order]
    first = np.searchsorted(sv, src)
    cnt = np.searchsorted(sv, src, side="right") - first
    pick = order[
        np.repeat(first, cnt) + (np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    ]
    extra = {k: surf[k][pick] for k in ("means", "quats", "scales", "opacities", "colors")}
    extra["means"][:, 2] -= np.repeat(depth, cnt) * vs  # fancy indexing made a copy
    extra["voxel"] = np.repeat(np.arange(len(src)), cnt)
    return src, new, extra


def ground_surface(
    surface: torch.Tensor, free: torch.Tensor, radius: int = GROUND_RADIUS
) -> torch.Tensor:
    """The bare ground ``[X, Y]`` under a surface ``[X, Y]`` (any unit): the lowest ``free``
    surface within ``radius`` columns (so trees, lumps and walls do not lift it), then filled
    into the remaining columns by repeated 3x3 averaging of their neighbours (as
    :func:`fill_columns` does). Like a DTM from a DSM; 0 where nothing is free."""
    big = torch.finfo(torch.float32).max
    x = torch.where(free, surface.float(), torch.full_like(surface, big, dtype=torch.float32))[
        None, None
    ]
    low = -F.max_pool2d(-x, 2 * radius + 1, stride=1, padding=radius)
    valid = (low < big).float()
    if not bool(valid.any()):
        return torch.zeros_like(surface, dtype=torch.float32)
    return fill_from_neighbours(
        torch.where(valid > 0, low, torch.zeros_like(low))[0, 0], valid[0, 0] > 0
    )


def build_heights(
    g: torch.Tensor,
    heights: torch.Tensor,
    base: torch.Tensor | None,
    region: tuple[int, int, int, int],
    voxel_size: float,
    caps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rebuild building columns of voxels ``g`` ``[n, 3]`` (global x, y, z) at given heights.

    ``heights`` ``[X, Y]`` metres above the ground (NaN: leave the column as generated), ``base``
    ``[X, Y]`` metres where the building starts (``min_height``); ``region`` ``(x0, y0, x1, y1)``
    the columns ``g`` covers. The ground under a building is :func:`ground_surface` of the free
    columns (the lowest surface around: trees and lumps do not lift it); the column keeps its
    voxels below the ground and gets voxels from ``ground + base`` to ``ground + height - 1``, so
    its top is ``round(height / voxel_size)`` voxels above the ground. A building's inside
    columns (lower than none of their 4 neighbours) keep only their roof voxel: nothing else of
    them can be seen. ``caps`` ``[X, Y]`` (metres above the ground, NaN: none) bound the other
    columns: their voxels from ``ground + cap`` up are removed and their surface voxel is the
    ground's (a road, cap 0, is flat at the ground); the ground is then estimated from the
    columns capped at 0 where there are any."""
    x0, y0, x1, y1 = region
    X, Y = x1 - x0, y1 - y0
    h = heights[x0:x1, y0:y1]
    b = base[x0:x1, y0:y1] if base is not None else torch.zeros_like(h)
    bld = ~torch.isnan(h)
    c = caps[x0:x1, y0:y1] if caps is not None else torch.full_like(h, float("nan"))
    capped = (~bld) & ~torch.isnan(c)
    if not (bool(bld.any()) or bool(capped.any())) or not len(g):
        return g

    def column_tops(
        v: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        vx, vy = v[:, 0] - x0, v[:, 1] - y0
        ins = (vx >= 0) & (vx < X) & (vy >= 0) & (vy < Y)
        t = torch.full((X * Y,), -1.0)
        t.scatter_reduce_(0, (vx * Y + vy)[ins], v[ins, 2].float(), "amax")
        return t.reshape(X, Y), vx, vy, ins

    def ground(t: torch.Tensor) -> torch.Tensor:  # [X, Y] first voxel above the bare ground
        free = (~bld) & (t >= 0)
        flat = free & (c == 0)
        return ground_surface(t + 1, flat if bool(flat.any()) else free).round().long()

    top, lx, ly, inside = column_tops(g)
    if bool(
        capped.any()
    ):  # first cut the bounded columns down, so the ground is that of the result
        g0 = ground(top)
        cv = torch.where(
            capped, (torch.nan_to_num(c) / voxel_size).round().clamp_min(0), torch.zeros_like(h)
        ).long()
        li, lj = lx[inside], ly[inside]
        over = torch.zeros(len(g), dtype=torch.bool)
        over[inside] = capped[li, lj] & (g[inside, 2] >= g0[li, lj] + cv[li, lj])
        cx_, cy_ = torch.nonzero(capped, as_tuple=True)  # their surface voxel: the ground's
        g = _unique_voxels(
            torch.cat(
                [g[~over], torch.stack([cx_ + x0, cy_ + y0, (g0[cx_, cy_] - 1).clamp_min(0)], 1)]
            )
        )
        top, lx, ly, inside = column_tops(g)
    if not bool(bld.any()):
        return g
    gr = ground(top)
    hv = torch.where(
        bld, (torch.nan_to_num(h) / voxel_size).round().clamp_min(1), torch.zeros_like(h)
    ).long()
    bv = torch.where(
        bld, (torch.nan_to_num(b) / voxel_size).round().clamp_min(0), torch.zeros_like(h)
    ).long()
    bv = torch.minimum(bv, hv - 1)
    roof = gr + hv - 1  # [X, Y] top voxel of each building column
    # keep: voxels outside building columns, and those below the ground in building columns
    gi = torch.zeros(len(g), dtype=torch.bool)
    gi[inside] = bld[lx[inside], ly[inside]]
    below = torch.zeros(len(g), dtype=torch.bool)
    below[inside] = g[inside, 2] < gr[lx[inside], ly[inside]]
    kept = g[~gi | below]
    # walls: a building column is solid from (ground + base) to its roof where a neighbour is lower
    pad = F.pad(torch.where(bld, roof, gr - 1)[None, None].float(), (1, 1, 1, 1), mode="replicate")[
        0, 0
    ].long()
    low = torch.stack([pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]]).amin(0)
    start = torch.where(low < roof, gr + bv, roof)  # inside columns: only the roof
    if base is not None:  # a raised building (min_height) keeps its whole underside
        start = torch.where(bv > 0, gr + bv, start)
    n = torch.where(bld, roof - start + 1, torch.zeros_like(roof)).clamp_min(0)
    xs, ys = torch.meshgrid(torch.arange(X), torch.arange(Y), indexing="ij")
    nf = n.flatten()
    cx = (xs.flatten() + x0).repeat_interleave(nf)
    cy = (ys.flatten() + y0).repeat_interleave(nf)
    offs = torch.arange(int(nf.sum())) - (torch.cumsum(nf, 0) - nf).repeat_interleave(nf)
    cz = start.flatten().repeat_interleave(nf) + offs
    # a raised building needs ground under it
    need_ground = bld & (bv > 0)
    gx, gy = torch.nonzero(need_ground, as_tuple=True)
    ground_vox = torch.stack([gx + x0, gy + y0, (gr[gx, gy] - 1).clamp_min(0)], 1)
    return _unique_voxels(torch.cat([kept, torch.stack([cx, cy, cz], 1), ground_vox]))


def _unique_voxels(v: torch.Tensor) -> torch.Tensor:
    """Voxels ``[n, 3]`` without repeats, first occurrences in their order."""
    if not len(v):
        return v
    key = (v[:, 0] * (int(v[:, 1].max()) + 1) + v[:, 1]) * (int(v[:, 2].max()) + 1) + v[:, 2]
    _, first = np.unique(key.numpy(), return_index=True)
    return v[torch.from_numpy(np.sort(first))]


def load_scene_pipeline(spec: str | None = None, device: str | None = None) -> EarthScenePipeline:
    """A pipeline folder (``save_pretrained``), a hub id, or ``None`` / ``"default"`` for the
    embedded default models (:mod:`earthgen.models`)."""
    import os

    # diffusers resolves the components' classes only from imported modules
    from flows.structure import StructureFlowDiT
    from flows.texture import TextureFlowNet
    from vae.structure import StructureVAE
    from vae.texture import TextureVAE

    if spec in (None, "default"):
        from earthgen.models import default_model_dir

        parts = {}
        for key, name, cls in (
            ("structure_vae", "structure-vae", StructureVAE),
            ("structure_flow", "structure-flow", StructureFlowDiT),
            ("texture_vae", "texture-vae", TextureVAE),
            ("texture_flow", "texture-flow", TextureFlowNet),
        ):
            parts[key] = cls.from_pretrained(default_model_dir(name)).float().eval()
        pipe = EarthScenePipeline(**parts)
    else:
        if os.path.isdir(spec) and not os.path.isfile(os.path.join(spec, "model_index.json")):
            raise UserInputError(f"{spec} is not a scene pipeline folder (no model_index.json)")
        try:
            pipe = EarthScenePipeline.from_pretrained(spec)
            for m in (pipe.structure_vae, pipe.structure_flow, pipe.texture_vae, pipe.texture_flow):
                m.float().eval()
        except (OSError, ValueError) as e:
            raise UserInputError(f"cannot load a scene pipeline from {spec}: {e}") from None
    pipe = pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return pipe


def save_dem(
    path, height: np.ndarray, voxel_size: float, crs: Any = None, map_transform: Any = None
):
    """Write the height map ``[Y, X]`` (metres, north-up, NaN = no data) as a float32 GeoTIFF of
    ``voxel_size`` pixels. ``map_transform`` (with ``crs``) is the north-up transform of the map
    the scene was generated from: the DEM keeps its north-west corner. Without it the raster is
    in the scene's local metres (origin at the south-west corner)."""
    import rasterio
    from rasterio.transform import Affine

    h = np.asarray(height, dtype=np.float32)
    if map_transform is None:
        transform = Affine(voxel_size, 0.0, 0.0, 0.0, -voxel_size, h.shape[0] * voxel_size)
    else:
        transform = Affine(voxel_size, 0.0, map_transform.c, 0.0, -voxel_size, map_transform.f)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=h.shape[0],
        width=h.shape[1],
        count=1,
        dtype="float32",
        crs=crs,
        transform=transform,
        nodata=np.nan,
        compress="deflate",
    ) as ds:
        ds.write(h, 1)
        ds.update_tags(units="metres above the scene base", source="earthgen scene")
    return path


def package_scene_models(
    structure_vae: str,
    structure_flow: str,
    texture_vae: str,
    texture_flow: str,
    out_root: str | None = None,
    fp16: bool = True,
) -> dict:
    """Write trained 3D model folders as the packaged defaults (``earthgen/assets/models/<name>/``,
    fp16 safetensors unless ``fp16=False``). Returns ``{name: size in MB}``."""
    import shutil
    from pathlib import Path

    from earthgen.models import MODELS_DIR
    from flows.structure import StructureFlowDiT
    from flows.texture import TextureFlowNet
    from vae.structure import StructureVAE
    from vae.texture import TextureVAE

    root = Path(out_root) if out_root else MODELS_DIR
    sizes = {}
    for name, src, cls in (
        ("structure-vae", structure_vae, StructureVAE),
        ("structure-flow", structure_flow, StructureFlowDiT),
        ("texture-vae", texture_vae, TextureVAE),
        ("texture-flow", texture_flow, TextureFlowNet),
    ):
        m = cls.from_pretrained(src)
        if fp16:
            m = m.half()
        dst = root / name
        tmp = dst.with_name(name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        m.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
        sizes[name] = round(sum(f.stat().st_size for f in dst.rglob("*") if f.is_file()) / 2**20, 2)
    return sizes
