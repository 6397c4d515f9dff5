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
holds it. Working memory is that of one window whatever the area; only the outputs grow with it.

Frames: voxel ``(x, y, z)`` indices from the scene's south-west-bottom corner (x east, y north,
z up), ``voxel_size`` metres each; maps are north-up (row 0 is the northern edge) and cover the
scene. All windows share one vertical frame of ``W`` voxels (scenes with more relief than that are
clipped at the top).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from earthgen.classes import NUM_CLASSES
from earthgen.errors import UserInputError

MAX_WINDOWS = 4096
DECODE_MARGIN = 4  # coarse cells of context around a window's core when decoding the structure


@dataclass
class EarthSceneOutput(BaseOutput):
    """A generated scene.

    ``coords`` ``[N, 3]`` int32 voxel indices (x east, y north, z up) from ``origin``;
    ``colors`` ``[N, 3]`` uint8 voxel colours (opacity-weighted mean of the voxel's surfels);
    ``surfels``: ``means [M, 3]`` (metres, same frame as ``origin``), ``quats [M, 4]`` (wxyz),
    ``scales [M, 3]``, ``opacities [M]``, ``colors [M, 3]`` in [0, 1], ``voxel [M]`` (row in
    ``coords``); ``height`` ``[Y, X]`` float32 surface height (metres above the scene's base,
    north-up rows, NaN for empty columns); ``windows`` the south-west corners (voxels) of the
    windows generated; ``seed`` the seed used (when the pipeline drew it).
    """

    coords: np.ndarray
    colors: np.ndarray
    surfels: dict
    voxel_size: float
    origin: np.ndarray
    height: np.ndarray
    windows: list
    seed: int | None = None


def _starts(n: int, window: int, stride: int) -> list[int]:
    """Window starts ``0, stride, 2 stride, ...`` covering ``n`` cells (the last may reach past)."""
    return [i * stride for i in range(math.ceil(max(n - window, 0) / stride) + 1)]


def _core(i: int, count: int, window: int, overlap: int) -> tuple[int, int]:
    """Window-local columns ``[lo, hi)`` kept from window ``i`` of ``count`` along one axis: the
    window less half the overlap on each side shared with a neighbour."""
    return (overlap // 2 if i > 0 else 0), (window - (overlap + 1) // 2 if i < count - 1 else window)


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
    h, valid = torch.where(empty, 0.0, top), (~empty).float()
    k = torch.ones(1, 1, 3, 3)
    while bool((valid == 0).any()):
        s, c = F.conv2d(h * valid, k, padding=1), F.conv2d(valid, k, padding=1)
        grow = (valid == 0) & (c > 0)
        h = torch.where(grow, s / c.clamp_min(1), h)
        valid = torch.where(grow, 1.0, valid)
    t = torch.where(empty, h.round().clamp_min(0), top)[0, 0].long()  # [X, Y] top of every column
    pad = F.pad(t[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0].long()
    low = torch.stack([pad[:-2, 1:-1], pad[2:, 1:-1], pad[1:-1, :-2], pad[1:-1, 2:]]).amin(0)
    bottom = torch.minimum(low + 1, t)  # [X, Y] lowest voxel each column must have
    depth = t - bottom + 1
    xs, ys = torch.meshgrid(torch.arange(X), torch.arange(Y), indexing="ij")
    n = depth.flatten()
    cx, cy = xs.flatten().repeat_interleave(n), ys.flatten().repeat_interleave(n)
    start = torch.cumsum(n, 0) - n
    cz = bottom.flatten().repeat_interleave(n) + torch.arange(int(n.sum())) - start.repeat_interleave(n)
    walls = torch.stack([torch.zeros_like(cx), cx, cy, cz], 1).to(vox.dtype)
    both = torch.cat([vox, walls])
    key = ((both[:, 1].long() * Y + both[:, 2].long()) * (int(both[:, 3].max()) + 1) + both[:, 3].long())
    _, first = np.unique(key.numpy(), return_index=True)
    return both[torch.from_numpy(np.sort(first))]


def _as_semantic(semantic: Any) -> torch.Tensor:
    s = semantic.semantic if hasattr(semantic, "semantic") else semantic
    s = torch.as_tensor(np.asarray(s))
    if s.ndim != 2:
        raise UserInputError(f"semantic must be a class-id map [H, W], got shape {tuple(s.shape)}")
    if s.is_floating_point():
        raise UserInputError("semantic must hold integer class ids (see earthgen.classes), got floats")
    if int(s.min()) < 0 or int(s.max()) >= NUM_CLASSES:
        raise UserInputError(f"class ids must be in 0..{NUM_CLASSES - 1}, found {int(s.min())}..{int(s.max())}")
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

    def __init__(self, structure_vae, structure_flow, texture_vae, texture_flow, voxel_size: float = 1.0):
        super().__init__()
        self.register_modules(structure_vae=structure_vae, structure_flow=structure_flow, texture_vae=texture_vae,
                              texture_flow=texture_flow)
        self.register_to_config(voxel_size=float(voxel_size))
        g = tuple(structure_flow.config.grid_size)
        if g[0] != g[1] or g[1] != g[2]:
            raise UserInputError(f"the structure flow's grid must be a cube, got {g}")
        if structure_flow.config.latent_channels != structure_vae.config.latent_channels:
            raise UserInputError("the structure flow and the structure VAE have different latent widths")
        if texture_flow.config.latent_channels != texture_vae.config.latent_channels:
            raise UserInputError("the texture flow and the texture VAE have different latent widths")

    @property
    def window(self) -> int:
        """Window side in voxels (8 x the structure flow's grid)."""
        return 8 * int(self.structure_flow.config.grid_size[0])

    @property
    def voxel_size(self) -> float:
        return float(self.config.voxel_size)

    # --- inputs ---------------------------------------------------------------------------------
    def check_inputs(self, semantic, image, gsd, size_m, overlap_m, steps, texture_steps, guidance_scale):
        vs = self.voxel_size
        if semantic is None and image is None:
            if size_m is None:
                raise UserInputError("give a semantic map, an image, or size_m (metres) for an unconditional scene")
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
            raise UserInputError(f"overlap_m must be in [0, {self.window * vs / 2:g}] metres (half a window), "
                                 f"got {overlap_m}")
        return gsd

    def _maps(self, semantic, image, gsd, size_m):
        """Conditions as ``[1, Ch, H, W]`` tensors and the scene's ``(nx, ny)`` in voxels."""
        sem = None if semantic is None else _as_semantic(semantic)
        img = None if image is None else _as_image(image)
        if sem is not None and img is not None and sem.shape[-2:] != img.shape[-2:]:
            raise UserInputError(f"the semantic map is {sem.shape[-1]}x{sem.shape[-2]} px but the image is "
                                 f"{img.shape[-1]}x{img.shape[-2]}: they must cover the same area at the same gsd")
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
    def _crop(m: torch.Tensor | None, nx: int, ny: int, x0: int, y0: int, w: int) -> torch.Tensor | None:
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
        generator: torch.Generator | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end=None,
    ) -> EarthSceneOutput | tuple:
        """Generate a scene.

        Args:
            semantic: class-id map ``[H, W]`` (north-up; ids of :mod:`earthgen.classes`) or a
                :class:`earthgen.geo.layout.Layout`.
            image: aerial image ``[H, W, 3]`` (uint8, or float in [0, 1]) of the same area.
            gsd: metres per pixel of the maps (a Layout gives its own).
            size_m: scene size in metres (one number or ``(x, y)``) when no map is given.
            overlap_m: overlap of neighbouring windows, metres.
            num_inference_steps / texture_steps: flow solver steps (Heun) of the structure and
                texture stages (texture defaults to the same).
            guidance_scale / texture_guidance_scale: classifier-free guidance of each stage.
            structure_threshold: occupancy logit threshold of the structure VAE's decoder.
            fill_holes: give every empty column a surface voxel (:func:`fill_columns`).
            generator: a CPU ``torch.Generator`` (all noise comes from it).
            output_type: ``"np"`` (arrays; the only type).
            callback_on_step_end: ``fn(pipeline, step, t, kwargs) -> dict``, called after each solver
                step with ``kwargs = {"stage", "window", "latents"}``; return ``{"latents": x}`` to
                replace the state.
        """
        if output_type != "np":
            raise UserInputError(f"output_type must be 'np', got {output_type!r}")
        gsd = self.check_inputs(semantic, image, gsd, size_m, overlap_m, num_inference_steps, texture_steps,
                                guidance_scale)
        sem, img, nx, ny = self._maps(semantic, image, gsd, size_m)
        vs, W = self.voxel_size, self.window
        ov = int(round(overlap_m / vs / 8)) * 8  # whole coarse cells
        stride = W - ov
        xs, ys = _starts(nx, W, stride), _starts(ny, W, stride)
        if len(xs) * len(ys) > MAX_WINDOWS:
            raise UserInputError(f"{nx * vs:g} x {ny * vs:g} m needs {len(xs) * len(ys)} windows; the limit is "
                                 f"{MAX_WINDOWS}")
        texture_steps = texture_steps or num_inference_steps
        tg = guidance_scale if texture_guidance_scale is None else texture_guidance_scale
        G = W // 8
        C = self.structure_flow.config.latent_channels
        NX, NY = xs[-1] + W, ys[-1] + W  # generated extent (voxels), cropped to nx x ny at the end
        canvas = torch.zeros(1 + C, NX // 8, NY // 8, G)  # coarse grid of the whole extent
        canvas[0] = -1.0
        done = torch.zeros(NX // 8, NY // 8, dtype=torch.bool)  # coarse columns generated
        tex_keys = torch.zeros(0, dtype=torch.long)  # sorted global voxel keys already textured
        tex_lat = torch.zeros(0, self.texture_flow.config.latent_channels)
        out_coords, out_surf = [], []
        windows = [(x0, y0) for y0 in ys for x0 in xs]
        cores = {}  # window index -> (x0, y0, x1, y1) global columns it keeps
        for wi, (x0, y0) in enumerate(windows):
            (lx0, lx1), (ly0, ly1) = _core(xs.index(x0), len(xs), W, ov), _core(ys.index(y0), len(ys), W, ov)
            cores[wi] = (x0 + lx0, y0 + ly0, min(x0 + lx1, nx), min(y0 + ly1, ny))
        fine: dict[int, torch.Tensor] = {}  # window index -> kept voxels [n, 3] (global)
        with self.progress_bar(total=3 * len(windows)) as bar:
            # 1. coarse structure, window by window, pinned to what neighbours generated
            for wi, (x0, y0) in enumerate(windows):
                s_w, i_w = self._crop(sem, nx, ny, x0, y0, W), self._crop(img, nx, ny, x0, y0, W)
                cx, cy = x0 // 8, y0 // 8
                known = canvas[:, cx:cx + G, cy:cy + G][None]
                kmask = done[cx:cx + G, cy:cy + G][None, None, :, :, None]
                grid = self._sample_structure(s_w, i_w, num_inference_steps, guidance_scale, generator,
                                              known if bool(kmask.any()) else None, kmask, wi, callback_on_step_end)
                new = ~done[cx:cx + G, cy:cy + G]
                canvas[:, cx:cx + G, cy:cy + G] = torch.where(new[None, :, :, None], grid[0].cpu(),
                                                              canvas[:, cx:cx + G, cy:cy + G])
                done[cx:cx + G, cy:cy + G] = True
                bar.update()
            # 2. fine voxels of each window's core, decoded with a margin of the finished canvas
            for wi in range(len(windows)):
                fine[wi] = self._decode_region(canvas, cores[wi], structure_threshold, fill_holes)
                bar.update()
            # 3. texture, window by window, pinned to the latents of voxels already textured
            for wi, (x0, y0) in enumerate(windows):
                s_w, i_w = self._crop(sem, nx, ny, x0, y0, W), self._crop(img, nx, ny, x0, y0, W)
                parts = [fine[j] for j in fine if _overlaps(cores[j], (x0, y0, x0 + W, y0 + W))]
                g = torch.cat(parts) if parts else torch.zeros(0, 3, dtype=torch.long)
                g = g[(g[:, 0] >= x0) & (g[:, 0] < x0 + W) & (g[:, 1] >= y0) & (g[:, 1] < y0 + W)]
                if not len(g):
                    bar.update()
                    continue
                vox = torch.cat([torch.zeros(len(g), 1, dtype=torch.long), g - torch.tensor([x0, y0, 0])], 1).int()
                keys = (g[:, 0] * NY + g[:, 1]) * W + g[:, 2]
                pos = torch.searchsorted(tex_keys, keys).clamp_max(max(len(tex_keys) - 1, 0))
                have = (tex_keys[pos] == keys) if len(tex_keys) else torch.zeros(len(keys), dtype=torch.bool)
                known_t = tex_lat[pos] if len(tex_keys) else None
                lat = self._sample_texture(vox, s_w, i_w, texture_steps, tg, generator,
                                           known_t if bool(have.any()) else None, have, wi, callback_on_step_end)
                c = cores[wi]
                keep = (g[:, 0] >= c[0]) & (g[:, 0] < c[2]) & (g[:, 1] >= c[1]) & (g[:, 1] < c[3])
                surf = self._decode_texture(vox, lat, x0, y0)
                out_coords.append(g[keep])
                out_surf.append((surf, keep))
                tex_keys, order = torch.sort(torch.cat([tex_keys, keys[keep]]))
                tex_lat = torch.cat([tex_lat, lat[keep].cpu()])[order]
                bar.update()
        return self._assemble(out_coords, out_surf, nx, ny, windows, return_dict)

    def _sample_structure(self, sem, img, steps, guidance, generator, known, kmask, wi, cb):
        from flows.structure import sample_structure

        return sample_structure(self.structure_flow, 1, semantic=sem, image=img, steps=steps, guidance=guidance,
                                generator=generator, known=known, known_mask=kmask,
                                callback=self._user_callback(cb, "structure", wi))

    def _decode_region(self, canvas: torch.Tensor, core: tuple[int, int, int, int], threshold: float,
                       fill_holes: bool) -> torch.Tensor:
        """Fine voxels ``[n, 3]`` (global) of the columns ``core = (x0, y0, x1, y1)``, decoded from
        the coarse canvas around them with a margin of ``DECODE_MARGIN`` coarse cells (so the decoder
        sees across window borders)."""
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
        lat = SparseTensor.from_coords(coords.to(device), feats.to(device), tuple(crop.shape[2:]), 1, check=False)
        vox = self.structure_vae.decode(lat, threshold=threshold)["occupancy"].coords.cpu()
        if fill_holes:
            vox = fill_columns(vox, (8 * (cx1 - cx0), 8 * (cy1 - cy0)))
        g = vox[:, 1:].long() + torch.tensor([8 * cx0, 8 * cy0, 0])
        return g[(g[:, 0] >= x0) & (g[:, 0] < x1) & (g[:, 1] >= y0) & (g[:, 1] < y1)]

    def _sample_texture(self, vox, sem, img, steps, guidance, generator, known, have, wi, cb):
        from flows.texture import sample_texture
        from vae.sparse import SparseTensor

        W = self.window
        device = self._execution_device
        x = SparseTensor.from_coords(vox.to(device), None, (W, W, W), 1, check=False)
        return sample_texture(self.texture_flow, x, semantic=None if sem is None else sem.to(device),
                              image=None if img is None else img.to(device), steps=steps, guidance=guidance,
                              generator=generator, known=known, known_mask=have,
                              callback=self._user_callback(cb, "texture", wi)).cpu()

    def _decode_texture(self, vox: torch.Tensor, lat: torch.Tensor, x0: int, y0: int) -> dict:
        from vae.sparse import SparseTensor

        W, vs = self.window, self.voxel_size
        device = self._execution_device
        x = SparseTensor.from_coords(vox.to(device), lat.to(device), (W, W, W), 1, check=False)
        g = self.texture_vae.decode(x, vs, (x0 * vs, y0 * vs, 0.0))
        return {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in g.items()}

    def _user_callback(self, cb, stage: str, wi: int):
        if cb is None:
            return None

        def fn(step: int, t: float, x: torch.Tensor):
            r = cb(self, step, t, {"stage": stage, "window": wi, "latents": x})
            return r.get("latents") if isinstance(r, dict) else None

        return fn

    def _assemble(self, out_coords, out_surf, nx, ny, windows, return_dict):
        vs = self.voxel_size
        coords = torch.cat(out_coords) if out_coords else torch.zeros(0, 3, dtype=torch.long)
        surf: dict = {k: [] for k in ("means", "quats", "scales", "opacities", "colors", "voxel")}
        base = 0
        for s, keep in out_surf:
            K = len(s["voxel"]) // max(len(keep), 1)
            row = torch.full((len(keep),), -1, dtype=torch.long)
            row[keep] = torch.arange(int(keep.sum())) + base
            m = keep.repeat_interleave(K)
            for k in ("means", "quats", "scales", "opacities", "colors"):
                surf[k].append(s[k][m])
            surf["voxel"].append(row[s["voxel"][m]])
            base += int(keep.sum())
        surf = {k: (torch.cat(v) if v else torch.zeros(0)).numpy() for k, v in surf.items()}
        n = len(coords)
        w = surf["opacities"][:, None] if n else np.zeros((0, 1))
        num = np.zeros((n, 3))
        den = np.zeros((n, 1))
        if n:
            np.add.at(num, surf["voxel"], surf["colors"] * w)
            np.add.at(den, surf["voxel"], w)
        colors = (np.clip(num / np.maximum(den, 1e-6), 0, 1) * 255 + 0.5).astype(np.uint8)
        c = coords.numpy().astype(np.int32).reshape(-1, 3)
        out = EarthSceneOutput(coords=c, colors=colors, surfels=surf, voxel_size=vs, origin=np.zeros(3),
                               height=surface_height(c, nx, ny, vs), windows=windows)
        return out if return_dict else tuple(out.values())


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
        for key, name, cls in (("structure_vae", "structure-vae", StructureVAE),
                               ("structure_flow", "structure-flow", StructureFlowDiT),
                               ("texture_vae", "texture-vae", TextureVAE),
                               ("texture_flow", "texture-flow", TextureFlowNet)):
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


def save_dem(path, height: np.ndarray, voxel_size: float, crs: Any = None, map_transform: Any = None):
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
    with rasterio.open(path, "w", driver="GTiff", height=h.shape[0], width=h.shape[1], count=1, dtype="float32",
                       crs=crs, transform=transform, nodata=np.nan, compress="deflate") as ds:
        ds.write(h, 1)
        ds.update_tags(units="metres above the scene base", source="earthgen scene")
    return path


def package_scene_models(structure_vae: str, structure_flow: str, texture_vae: str, texture_flow: str,
                         out_root: str | None = None, fp16: bool = True) -> dict:
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
    for name, src, cls in (("structure-vae", structure_vae, StructureVAE), ("structure-flow", structure_flow,
                           StructureFlowDiT), ("texture-vae", texture_vae, TextureVAE),
                           ("texture-flow", texture_flow, TextureFlowNet)):
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
