"""``EarthImagePipeline``: controllable latent diffusion for satellite imagery.

One pipeline for text -> image, layout/control maps -> image, image -> image, inpainting and
unbounded (tiled) generation, built from diffusers components so Stable-Diffusion-format
checkpoints load from a folder or hub id:

- ``vae`` (``AutoencoderKL``), ``unet`` (``UNet2DConditionModel``), ``scheduler`` (any diffusers
  scheduler), ``text_encoder`` + ``tokenizer`` (transformers; CLIP or the offline MiniLM),
- optional ``box_encoder`` (:class:`earthgen.conditioning.boxes.BoxTokenEncoder`) with a UNet
  built with ``attention_type="gated"`` (:class:`controls.boxes.GroundedUNet2DConditionModel`):
  object boxes (horizontal or rotated, 8 normalised corner numbers + class-name embedding) become
  grounding tokens read by gated self-attention (AeroGen / GLIGEN),
- optional ``metadata_encoder`` (:class:`earthgen.conditioning.MetadataEncoder`, its embedding
  goes in as the UNet's ``class_labels`` with ``class_embed_type="identity"``: summed into the
  timestep embedding) and ``controlnet`` (:class:`controls.FusedControlNet`),
- optional ``layout_encoder`` (:class:`earthgen.conditioning.dense.LayoutMapEncoder`): the
  layout's class fractions per latent cell, concatenated to the UNet input (after the box map,
  if any) instead of (or besides) going through the control branch.

Classifier-free guidance runs an unconditional branch with *every* condition removed: the empty
prompt, all metadata fields null, every control map at weight 0, every box null, a zero layout map.

Large areas: when the latent is larger than ``tile_size`` the sampler runs the UNet on
windows overlapping by an eighth of a window, spread evenly, and blends their predictions in
latent space with weights that sum to one at every step (MultiDiffusion); the VAE decodes by
tiles too, so memory does not grow with the area and time grows linearly with it (about 1.3x
the image's area goes through the UNet per step at any size).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler
from diffusers.utils import BaseOutput

# Imported so that from_pretrained can rebuild these saved components in a fresh process
# (diffusers only loads classes from modules that are already imported).
import controls.boxes  # noqa: F401
import controls.fused  # noqa: F401
import earthgen.conditioning.boxes  # noqa: F401
import earthgen.conditioning.metadata  # noqa: F401
import earthgen.models  # noqa: F401  (the packaged model's text-encoder reference class)
import vae.taef2  # noqa: F401
from earthgen.conditioning.dense import one_hot, road_map
from earthgen.errors import UserInputError
from earthgen.models import PIPELINE_NAMES, resolve_model


@dataclass
class EarthImageOutput(BaseOutput):
    """``images``: list of PIL images, ``[B, H, W, 3]`` float array in 0..1, ``[B, 3, H, W]``
    tensor, or latents, as ``output_type`` asks."""

    images: Any


TILE_OVERLAP_DIVISOR = 8
"""Default overlap of the sampling windows: ``tile // 8`` latent pixels (at least 2), so the
windows' total area stays within about ``(1 + 1 / 7) ** 2 = 1.31`` times the image's at every size
(:func:`_windows` shrinks the windows to fit instead of overlapping them more)."""

TILE_BATCH = 4
"""Windows of one shape sampled in one UNet call (the per-step working set is this many windows
plus the latent). On the packaged model (CPU, 1 thread) 12 % less CPU time per window than one
at a time for the UNet alone, 25 % for 1 MP sampling (``benchmarks/bench_tiled.py``)."""


def default_tile_overlap(tile: int) -> int:
    """The default overlap (latent pixels) of ``tile``-wide sampling windows: ``tile // 8``, at
    least 2, below ``tile``."""
    return max(0, min(max(2, tile // TILE_OVERLAP_DIVISOR), tile - 1))


def _spread(total: int, n: int) -> list[int]:
    """``total`` split into ``n`` whole parts that differ by at most one, the larger ones spread."""
    return [(i + 1) * total // n - i * total // n for i in range(n)]


def _windows(size: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int]]:
    """Windows ``(start, length)`` covering ``[0, size)``: as few as windows of at most ``tile``
    overlapping by at least ``overlap`` need, each shrunk to the smallest multiple of
    ``multiple`` (when ``tile`` is one; the UNet's downscale) that still covers, and spread evenly
    (neighbour overlaps differ by at most one granule). The total length stays within
    ``size + (n - 1) * overlap + multiple - 1``: the redundant work per axis is about
    ``overlap / (tile - overlap)``, not half a window. ``size <= tile``: one window."""
    if size <= tile:
        return [(0, size)]
    g = multiple if multiple > 1 and tile % multiple == 0 else 1
    n = math.ceil((size - overlap) / (tile - overlap))
    total = min(n * tile, math.ceil((size + (n - 1) * overlap) / g) * g)
    lengths = [g * q for q in _spread(total // g, n)]
    gaps = _spread(total - size, n - 1)  # the overlaps between neighbours
    if any(o >= min(a, b) for o, a, b in zip(gaps, lengths, lengths[1:], strict=False)):
        lengths = [tile] * n  # overlap close to the window: full windows, evenly spread
        gaps = _spread(n * tile - size, n - 1)
    starts = [0]
    for length, gap in zip(lengths, gaps, strict=False):
        starts.append(starts[-1] + length - gap)
    return list(zip(starts, lengths, strict=True))


def _blend_1d(windows: list[tuple[int, int]], device=None) -> list[torch.Tensor]:
    """Blending weights ``[length]`` of each window of a :func:`_windows` plan along one axis:
    1 inside, a raised-cosine ramp across each overlap with a neighbour (rising over the overlap
    with the previous window, falling over the next), normalised so that the weights of all
    windows sum to one at every position (they already do where at most two windows meet).
    Never 0, so every position is predicted."""
    raw = []
    for i, (s, n) in enumerate(windows):
        w = torch.ones(n, dtype=torch.float64)
        pos = torch.arange(n, dtype=torch.float64)
        if i > 0:
            ov = windows[i - 1][0] + windows[i - 1][1] - s
            if ov > 0:
                up = 0.5 - 0.5 * torch.cos(math.pi * (pos + 0.5) / ov)
                w = torch.minimum(w, torch.where(pos < ov, up, 1.0))
        if i + 1 < len(windows):
            ov = s + n - windows[i + 1][0]
            if ov > 0:
                back = n - 1 - pos
                down = 0.5 - 0.5 * torch.cos(math.pi * (back + 0.5) / ov)
                w = torch.minimum(w, torch.where(back < ov, down, 1.0))
        raw.append(w)
    end = max(s + n for s, n in windows)
    total = torch.zeros(end, dtype=torch.float64)
    for (s, n), w in zip(windows, raw, strict=True):
        total[s : s + n] += w
    return [
        (w / total[s : s + n]).float().to(device) for (s, n), w in zip(windows, raw, strict=True)
    ]


def _window_weight(wy: torch.Tensor, wx: torch.Tensor) -> torch.Tensor:
    """The 2-D blending weight ``[1, 1, h, w]`` of a window from its rows' and columns' 1-D
    weights (:func:`_blend_1d`); over a grid of windows they sum to one everywhere."""
    return (wy[:, None] * wx[None, :])[None, None]


def _window_blocks(per_window: list[torch.Tensor], n_blocks: int) -> torch.Tensor:
    """Conditions of ``k`` windows for one batched UNet call: each ``[n_blocks * B, ...]``
    (guidance blocks, null first) -> ``[n_blocks * k * B, ...]``, block-major then window-major,
    matching ``torch.cat`` of the ``k`` windows' latents (``[k * B, ...]``) repeated per block."""
    if len(per_window) == 1:
        return per_window[0]
    return torch.stack([v.unflatten(0, (n_blocks, -1)) for v in per_window], dim=1).flatten(0, 2)


def _crops(v: torch.Tensor, chunk: list, th: int, tw: int, scale: int = 1) -> list[torch.Tensor]:
    """The ``th x tw`` latent windows at ``(y0, x0, ...)`` of ``chunk`` cut from ``v``
    ``[N, C, H, W]`` (``scale`` pixels per latent pixel: ``v`` in pixels)."""
    s = scale
    return [v[:, :, y0 * s : (y0 + th) * s, x0 * s : (x0 + tw) * s] for y0, x0, *_ in chunk]


MASK_FEATHER_PX = 8
"""Default width (pixels) of the soft seam around an inpainting mask: the decoded image is pasted
into the input through the mask widened by this band (:func:`feather_mask`); every pixel farther
than this from the mask is the input pixel, unchanged."""


def feather_mask(mask: torch.Tensor, band: int = MASK_FEATHER_PX) -> torch.Tensor:
    """The paste-back weight of an inpainting mask: ``[B, 1, H, W]`` (1 = repaint, soft values
    allowed) -> ``[B, 1, H, W]`` in 0..1, equal to the mask (clamped to 0..1) inside it and
    falling off outside it with a raised cosine of the Euclidean distance ``r`` to the mask,
    ``0.5 (1 + cos(pi r / (band + 1)))`` for ``0 < r <= band``, then exactly 0: a pixel more than
    ``band`` pixels from every masked pixel gets weight 0. ``band=0``: the mask itself."""
    m = mask.float().clamp(0.0, 1.0)
    if band <= 0:
        return m
    h, w = m.shape[-2:]
    padded = F.pad(m, (band, band, band, band))
    out = m
    for dy in range(-band, band + 1):
        for dx in range(-band, band + 1):
            r = math.hypot(dy, dx)
            if r == 0 or r > band:
                continue
            weight = 0.5 * (1.0 + math.cos(math.pi * r / (band + 1)))
            shifted = padded[..., band + dy : band + dy + h, band + dx : band + dx + w]
            out = torch.maximum(out, shifted * weight)
    return out


def paste_back(decoded: torch.Tensor, image: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Composite an inpainted decode into the input: ``weight * decoded + (1 - weight) * image``
    where ``weight > 0``, and ``image`` itself (bit for bit) where ``weight == 0``.

    ``decoded``: ``[B, 3, H, W]``; ``image``: ``[1 or B, 3, H, W]``; ``weight``:
    ``[1 or B, 1, H, W]`` (:func:`feather_mask`). Returns ``[B, 3, H, W]`` in ``decoded``'s dtype
    and device."""
    image = image.to(decoded.device, decoded.dtype).expand_as(decoded)
    weight = weight.to(decoded.device, decoded.dtype)
    return torch.where(weight > 0, torch.lerp(image, decoded, weight), image)


def needs_attention_mask(text_encoder) -> bool:
    """Whether prompts go to ``text_encoder`` with their attention mask: not for a CLIP text model
    (Stable Diffusion's convention) unless its config sets ``use_attention_mask``; yes for any
    other encoder (the packaged MiniLM/BERT). Training and sampling both use this rule."""
    cfg = getattr(text_encoder, "config", None)
    use_mask = getattr(cfg, "use_attention_mask", None)
    if use_mask is None:
        use_mask = not str(getattr(cfg, "model_type", "")).startswith("clip")
    return bool(use_mask)


def _to_tensor_image(image: Any) -> torch.Tensor:
    """PIL / ``[H, W, 3]`` uint8 or float array / ``[B, 3, H, W]`` tensor -> float
    ``[B, 3, H, W]`` in 0..1."""
    if isinstance(image, torch.Tensor):
        x = image.float()
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or x.shape[1] != 3:
            raise UserInputError(f"image tensor must be [B, 3, H, W], got {tuple(image.shape)}")
        return x
    if hasattr(image, "convert"):  # PIL
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise UserInputError(f"image array must be [H, W, 3] or [B, H, W, 3], got {arr.shape}")
    x = torch.from_numpy(arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else 1.0))
    return x.permute(0, 3, 1, 2)


TEXT2EARTH_LEVELS = (10, 18)
"""Text2Earth's resolution codes: Google-Maps zoom levels 10 (128 m/px) to 18 (0.5 m/px), with
``gsd = 2 ** (17 - level)`` m/px; code 0 = unknown resolution (also the CFG null)."""


def text2earth_level(gsd: Any, batch: int | None = None) -> torch.Tensor:
    """Ground sample distance (m/px; a number or ``[B]`` values) -> Text2Earth's resolution code
    ``[B]`` (int64): the zoom level ``17 - log2(gsd)`` rounded to the nearest level (halves to the
    finer one) and clamped to 10..18 with a warning outside; NaN entries -> 0 (unknown).

    Text2Earth (github.com/Chen-Yang-Liu/Text2Earth, README.md at commit 29049fa, "Resolution =
    2^(17 - Level)", levels 10..18; ``Text2EarthDiffusionPipeline.__call__`` in
    src/diffusers/pipelines/stable_diffusion/pipeline_text2earth_diffusion.py passes the level as
    the UNet's ``class_labels``, 0 without one and for the CFG null branch)."""
    g = torch.as_tensor(gsd, dtype=torch.float64).flatten()
    if batch is not None:
        if g.numel() == 1:
            g = g.expand(batch)
        elif g.numel() != batch:
            raise UserInputError(f"gsd: {g.numel()} values for a batch of {batch}")
    if bool((g <= 0).any()) or bool(g.isinf().any()):
        raise UserInputError("gsd must be a finite number > 0 metres/pixel")
    known = ~g.isnan()
    level = torch.floor(17.0 - torch.log2(torch.nan_to_num(g, nan=1.0)) + 0.5)
    lo, hi = TEXT2EARTH_LEVELS
    outside = known & ((level < lo) | (level > hi))
    if bool(outside.any()):
        warnings.warn(
            f"gsd {g[outside][0].item():g} m/px is outside Text2Earth's {2.0 ** (17 - hi):g}.."
            f"{2.0 ** (17 - lo):g} m/px (zoom levels {lo}..{hi}); using the nearest level",
            UserWarning,
            stacklevel=3,
        )
    return torch.where(known, level.clamp(lo, hi), torch.zeros_like(level)).long()


class EarthImagePipeline(DiffusionPipeline):
    """Satellite image generation from text, metadata (GSD, location, date), dense control maps
    and reference images; see the module docstring."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["metadata_encoder", "controlnet", "box_encoder", "layout_encoder"]

    def __init__(
        self,
        vae,
        unet,
        scheduler,
        text_encoder,
        tokenizer,
        metadata_encoder=None,
        controlnet=None,
        box_encoder=None,
        layout_encoder=None,
        control_guidance_end: float = 1.0,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            unet=unet,
            scheduler=scheduler,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            metadata_encoder=metadata_encoder,
            controlnet=controlnet,
            box_encoder=box_encoder,
            layout_encoder=layout_encoder,
        )
        # the model's default fraction of sampling steps that run the control branch (saved in
        # model_index.json)
        self.register_to_config(control_guidance_end=float(control_guidance_end))
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def _normalized_vae(self) -> bool:
        """True for a VAE that standardises its latents itself (``normalize_latents``, TAEF2)."""
        return hasattr(self.vae, "normalize_latents")

    @property
    def takes_layout(self) -> bool:
        """True when the model is conditioned on layouts (a control branch with a ``layout``
        condition, or a layout encoder feeding the UNet input)."""
        return self.layout_encoder is not None or (
            self.controlnet is not None and "layout" in self.controlnet.condition_names
        )

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (the VAE's and the control branch's downscale)."""
        f = int(self.vae_scale_factor)
        if self.controlnet is not None:
            f = max(f, int(self.controlnet.downscale))
        return f

    def default_control_guidance_end(self, with_maps: bool = True) -> float:
        """The control window's end when none is asked for: the model's
        ``config.control_guidance_end``. Without control maps (``with_maps=False``) the control
        branch does not run at all (no maps, no branch: text-only sampling is the UNet alone), so
        the window is moot; the same value is returned."""
        return float(self.config.control_guidance_end)

    # --- conditions ----------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> token embeddings ``[B, L, D]`` (D must equal the UNet's cross-attention
        width).

        The tokens are padded to the tokenizer's length (at most 77). The attention mask goes to
        the text encoder only where it needs one: a CLIP text model gets none (padding tokens
        attend causally to the prompt, exactly as ``diffusers.StableDiffusionPipeline`` encodes,
        which SD-format checkpoints were trained with) unless its config sets
        ``use_attention_mask``; any other encoder (the packaged MiniLM/BERT, trained that way)
        gets it."""
        tok = self.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=min(int(self.tokenizer.model_max_length), 77),
            return_tensors="pt",
        )
        mask = (
            tok["attention_mask"].to(self._execution_device)
            if needs_attention_mask(self.text_encoder)
            else None
        )
        out = self.text_encoder(
            input_ids=tok["input_ids"].to(self._execution_device), attention_mask=mask
        )
        return out.last_hidden_state.to(self.unet.dtype)

    def class_labels(self, gsd, metadata: dict | None, batch: int, drop: torch.Tensor | None):
        """The UNet's ``class_labels``, or None for a UNet without a class embedding:

        - a metadata embedding ``[B, D]`` (a ``metadata_encoder``, ``class_embed_type="identity"``),
        - Text2Earth's resolution codes ``[B]`` (``class_embed_type="timestep"``: the integer code
          goes through the UNet's sinusoidal timestep projection and its ``class_embedding`` MLP):
          the Google-Maps zoom level of ``gsd`` (:func:`text2earth_level`), 0 (unknown) without
          ``gsd``, for NaN entries and for dropped samples (``drop``; the CFG null branch),
        - integer resolution classes (``num_class_embeds``: 0.1 m/px steps, class 0 = null).
        """
        meta = dict(metadata or {})
        if gsd is not None:
            meta["gsd"] = gsd
        cfg = self.unet.config
        if self.metadata_encoder is not None:
            emb = self.metadata_encoder(meta, batch_size=batch, drop=drop)
            return emb.to(device=self._execution_device, dtype=self.unet.dtype)
        if cfg.get("class_embed_type") == "timestep":
            other = sorted(k for k, v in meta.items() if k != "gsd" and v is not None)
            if other:
                raise UserInputError(
                    f"this model takes the resolution only (gsd), not {', '.join(other)}"
                )
            labels = torch.zeros(batch, dtype=torch.long)
            if meta.get("gsd") is not None:
                labels = text2earth_level(meta["gsd"], batch)
            if drop is not None:
                labels = torch.where(drop.bool().cpu(), torch.zeros_like(labels), labels)
            return labels.to(self._execution_device)
        if cfg.get("num_class_embeds"):
            n = int(cfg.num_class_embeds)
            labels = torch.zeros(batch, dtype=torch.long)
            if "gsd" in meta and meta["gsd"] is not None:
                g = torch.as_tensor(meta["gsd"], dtype=torch.float32).flatten().expand(batch)
                if bool((g <= 0).any()):
                    raise UserInputError("gsd must be > 0 metres/pixel")
                labels = (torch.round(g * 10.0).long()).clamp(1, n - 1)  # 0.1 m/px steps
            if drop is not None:
                labels = torch.where(drop.bool(), torch.zeros_like(labels), labels)
            return labels.to(self._execution_device)
        if meta:
            raise UserInputError(
                "this model takes no metadata (no metadata encoder, no class embedding)"
            )
        return None

    @staticmethod
    def layout_ids(layout, batch: int, height: int, width: int) -> torch.Tensor | None:
        """``layout`` (class ids ``[H, W]``/``[B, H, W]``, or an object with ``.semantic``) ->
        ``[B, H, W]`` ids checked against the image size; None stays None."""
        if layout is None:
            return None
        sem = getattr(layout, "semantic", layout)
        ids = (
            sem
            if isinstance(sem, torch.Tensor)
            else torch.from_numpy(np.array(sem, dtype=np.int64))
        )
        if ids.dim() == 2:
            ids = ids[None]
        if tuple(ids.shape[-2:]) != (height, width):
            raise UserInputError(
                f"layout is {ids.shape[-1]}x{ids.shape[-2]} pixels but the image is "
                f"{width}x{height}; rasterize it at the image size"
            )
        if ids.shape[0] == 1 and batch > 1:
            ids = ids.expand(batch, -1, -1)
        return ids

    def dense_controls(
        self, layout, controls: dict | None, batch: int, height: int, width: int
    ) -> dict:
        """Build the control maps: ``layout`` (see :meth:`layout_ids`) gives ``layout`` (one-hot)
        and ``roads`` (for a model with a control branch; a model with only a layout encoder takes
        the layout through :meth:`layout_map`); ``controls`` adds/overrides maps by name
        (``[B, C, H, W]`` tensors)."""
        maps: dict[str, torch.Tensor] = {}
        ids = self.layout_ids(layout, batch, height, width)
        if ids is not None and self.controlnet is None and self.layout_encoder is None:
            raise UserInputError(
                "a layout was given but this model takes none "
                "(no control branch, no layout encoder)"
            )
        if (
            ids is not None
            and self.controlnet is not None
            and (self.layout_encoder is None or "layout" in self.controlnet.condition_names)
        ):
            maps["layout"] = one_hot(ids)
            maps["roads"] = road_map(ids)
        for k, v in (controls or {}).items():
            if v is None:
                continue
            t = torch.as_tensor(v).float()
            if t.dim() == 3:
                t = t[None]
            if t.shape[0] == 1 and batch > 1:
                t = t.expand(batch, -1, -1, -1)
            maps[k] = t
        if maps and self.controlnet is None:
            raise UserInputError("control maps were given but this model has no control branch")
        if self.controlnet is not None and "roads" not in self.controlnet.condition_names:
            maps.pop("roads", None)  # derived from the layout; only for models trained with it
        return maps

    def prepare_boxes(self, boxes: Any, batch: int, num_images_per_prompt: int) -> list | None:
        """``boxes`` (a BoxSet, one per prompt, or one per image; pixel corners) -> one BoxSet per
        image."""
        from earthgen.boxes import BoxSet

        if boxes is None:
            return None
        if self.box_encoder is None:
            raise UserInputError(
                "boxes were given but this model has no box conditioning (box_encoder)"
            )
        sets = [boxes] if isinstance(boxes, BoxSet) else list(boxes)
        if not all(isinstance(b, BoxSet) for b in sets):
            raise UserInputError("boxes must be an earthgen.boxes.BoxSet or a list of them")
        if len(sets) == 1:
            sets = sets * batch
        elif len(sets) * num_images_per_prompt == batch:
            sets = [b for b in sets for _ in range(num_images_per_prompt)]
        if len(sets) != batch:
            raise UserInputError(f"got {len(sets)} box sets for {batch} images")
        for b in sets:
            if len(b) and not np.isfinite(b.corners).all():
                raise UserInputError("box corners must be finite numbers (pixels)")
        self._box_class_emb = {}  # class-name embeddings of this call, filled by _box_classes
        return sets

    def _box_classes(self, names: list[list[str]]) -> torch.Tensor:
        """Class-name embeddings ``[B, N, D_text]`` of padded name lists ("" = zeros)."""
        from earthgen.conditioning.boxes import class_embeddings

        if getattr(self, "_box_class_emb", None) is None:
            self._box_class_emb = {}
        return class_embeddings(
            names, self.text_encoder, self.tokenizer, self._box_class_emb, self._execution_device
        )

    def box_tokens(
        self, sets: list, x0: int, y0: int, width: int, height: int, drop: bool
    ) -> torch.Tensor:
        """Grounding tokens ``[B, N, D]`` of the boxes whose centre lies in the pixel window
        ``(x0, y0, width, height)``, in window-normalised corners; ``drop``: all null."""
        from earthgen.boxes import BoxSet
        from earthgen.conditioning.boxes import pack_boxes

        local = []
        for b in sets:
            c = b.corners - np.array([x0, y0], dtype=np.float64)
            ctr = c.mean(axis=1) if len(c) else np.zeros((0, 2))
            keep = (ctr[:, 0] >= 0) & (ctr[:, 0] < width) & (ctr[:, 1] >= 0) & (ctr[:, 1] < height)
            local.append(BoxSet(c[keep], [lab for lab, k in zip(b.labels, keep, strict=True) if k]))
        corners, names, mask = pack_boxes(local, width, height)
        if drop:
            mask = torch.zeros_like(mask)
        cls = self._box_classes(names)
        dev, dt = self._execution_device, self.box_encoder.dtype
        return self.box_encoder(corners.to(dev, dt), cls.to(dev, dt), mask.to(dev, dt)).to(
            self.unet.dtype
        )

    def _layout_channels(self) -> int:
        return 0 if self.layout_encoder is None else self.layout_encoder.channels

    def input_maps(
        self, sets: list | None, layout, cfg: bool, batch: int, height: int, width: int
    ) -> torch.Tensor | None:
        """The maps concatenated to the UNet input,
        ``[B (2B under CFG, null half first), C, H/f, W/f]``: the dense box map
        (:meth:`box_raster`), then the layout map (:meth:`layout_map`); None for a UNet that takes
        neither."""
        extra = int(self.unet.config.in_channels) - int(self.unet.config.out_channels)
        lay = self._layout_channels()
        if extra < lay:
            raise UserInputError(
                f"the layout encoder makes {lay} channels but the UNet takes only {extra} "
                "besides the latent"
            )
        maps = [
            m
            for m in (
                self.box_raster(sets, cfg, batch, height, width),
                self.layout_map(layout, cfg, batch, height, width),
            )
            if m is not None
        ]
        if not maps:
            return None
        out = torch.cat(maps, dim=1)
        if out.shape[1] != extra:
            raise UserInputError(
                f"the UNet takes {extra} map channels besides the latent but the pipeline "
                f"makes {out.shape[1]}"
            )
        return out

    def layout_map(
        self, layout, cfg: bool, batch: int, height: int, width: int
    ) -> torch.Tensor | None:
        """The layout map ``[B (2B under CFG, null half first), K, H/f, W/f]`` of a model with a
        layout encoder (zeros when no layout is given); None for a model without one."""
        if self.layout_encoder is None:
            return None
        ids = self.layout_ids(layout, batch, height, width)
        m = self.layout_encoder(ids, batch, self.vae_scale_factor, size=(height, width))
        m = m.to(self._execution_device, self.unet.dtype)
        return torch.cat([torch.zeros_like(m), m]) if cfg else m

    def box_raster(
        self, sets: list | None, cfg: bool, batch: int, height: int, width: int
    ) -> torch.Tensor | None:
        """The dense box map ``[B (2B under CFG, null half first), C, H/f, W/f]`` of the whole
        image for a UNet with box-map input channels (zeros when no boxes are given); None for
        a UNet without them."""
        from earthgen.conditioning.boxes import check_box_map, pack_boxes

        c = int(getattr(self.unet, "raster_channels", 0)) - self._layout_channels()
        if c <= 0:
            return None
        f = self.vae_scale_factor
        dev, dt = self._execution_device, self.unet.dtype
        if sets is None:
            r = torch.zeros(batch, c, height // f, width // f, device=dev, dtype=dt)
        else:
            check_box_map(self.unet, self.box_encoder, self._layout_channels())
            corners, names, mask = pack_boxes(sets, width, height)
            be = self.box_encoder
            r = be.raster(
                corners.to(dev, be.dtype),
                self._box_classes(names).to(dev, be.dtype),
                mask.to(dev, be.dtype),
                height // f,
                width // f,
            ).to(dt)
        return torch.cat([torch.zeros_like(r), r]) if cfg else r

    def _grounding(
        self, sets, cfg: bool, x0: int, y0: int, width: int, height: int
    ) -> torch.Tensor | None:
        """Tokens for one window, unconditional (all null) half first under CFG."""
        if sets is None:
            return None
        tokens = self.box_tokens(sets, x0, y0, width, height, drop=False)
        if cfg:
            tokens = torch.cat([self.box_tokens(sets, x0, y0, width, height, drop=True), tokens])
        return tokens

    # --- checks --------------------------------------------------------------------------------

    def check_inputs(
        self,
        height,
        width,
        steps,
        guidance_scale,
        strength,
        image,
        mask,
        tile_size,
        overlap,
        control_start: float = 0.0,
        control_end: float = 1.0,
        mask_feather: int = MASK_FEATHER_PX,
    ):
        f = self.size_multiple
        if height <= 0 or width <= 0 or height % f or width % f:
            raise UserInputError(
                f"height and width must be positive multiples of {f}, got {width}x{height}"
            )
        if steps <= 0:
            raise UserInputError(f"num_inference_steps must be > 0, got {steps}")
        if guidance_scale < 0:
            raise UserInputError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if not 0.0 < strength <= 1.0:
            raise UserInputError(f"strength must be in (0, 1], got {strength}")
        if not 0.0 <= control_start < control_end <= 1.0:
            raise UserInputError(
                "need 0 <= control_guidance_start < control_guidance_end <= 1, got "
                f"{control_start} and {control_end}"
            )
        if mask is not None and image is None:
            raise UserInputError(
                "inpainting needs the image to edit (image=...) as well as the mask"
            )
        if (
            isinstance(mask_feather, bool)
            or not isinstance(mask_feather, (int, np.integer))
            or mask_feather < 0
        ):
            raise UserInputError(
                f"mask_feather must be a whole number of pixels >= 0, got {mask_feather!r}"
            )
        if tile_size is not None and (tile_size <= 0 or not 0 <= overlap < tile_size):
            raise UserInputError(
                f"need tile_size > overlap >= 0 (latent pixels), got {tile_size}, {overlap}"
            )
        if steps < 100 and type(self.scheduler) is DDPMScheduler:
            warnings.warn(
                f"sampling with DDPM in {steps} steps blurs images towards the mean; set "
                "pipe.scheduler = earthgen.pipelines.image.sampling_scheduler(pipe.scheduler) "
                "(DPM-Solver++ on the same noise schedule)",
                UserWarning,
                stacklevel=3,
            )

    # --- sampling ------------------------------------------------------------------------------

    def _eps(
        self,
        x,
        t,
        text,
        labels,
        packed,
        cfg: bool,
        guidance_scale: float,
        objs=None,
        raster=None,
        metadata_scale: float | None = None,
    ) -> torch.Tensor:
        """Noise prediction on one window, with classifier-free guidance; ``objs``: box tokens,
        ``raster``: the input maps of the window (concatenated to the UNet input,
        :meth:`input_maps`).

        Under CFG the conditions come in blocks of the batch, every condition removed first. With
        ``metadata_scale`` there are three blocks (null; metadata only; all conditions) and
        ``eps = e0 + s_m (e_meta - e0) + s (e_all - e_meta)``; otherwise two and
        ``eps = e0 + s (e_all - e0)`` (the same when ``s_m = s``). Box tokens come in two blocks
        (:meth:`_grounding`); the metadata-only block gets the null ones."""
        n_branch = (3 if metadata_scale is not None else 2) if cfg else 1
        if objs is not None and n_branch == 3:
            objs = torch.cat([objs[: x.shape[0]], objs])
        x_in = torch.cat([x] * n_branch)
        x_in = self.scheduler.scale_model_input(x_in, t)
        x_lat = x_in
        if raster is not None:
            x_in = torch.cat([x_in, raster.to(x_in.dtype)], dim=1)
        kw: dict = {}
        if (
            packed is not None
        ):  # a branch made before the input maps were added sees the latents only
            cn_in = (
                x_in if self.controlnet.controlnet.config.in_channels == x_in.shape[1] else x_lat
            )
            down, mid = self.controlnet(cn_in, t, text, packed, class_labels=labels)
            kw = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        if objs is not None:
            kw["cross_attention_kwargs"] = {"gligen": {"objs": objs}}
        eps = self.unet(x_in, t, encoder_hidden_states=text, class_labels=labels, **kw).sample
        if n_branch == 3:
            uncond, meta, cond = eps.chunk(3)
            # guidance <= 1 means no text guidance, as with two branches: the conditional step on
            # top
            eps = (
                uncond + metadata_scale * (meta - uncond) + max(guidance_scale, 1.0) * (cond - meta)
            )
        elif cfg:
            uncond, cond = eps.chunk(2)
            eps = uncond + guidance_scale * (cond - uncond)
        return eps

    @property
    def _unet_multiple(self) -> int:
        """Latent sides the UNet halves cleanly down to its lowest level: ``2 ** (levels - 1)``."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    def _eps_tiled(
        self,
        x,
        t,
        text,
        labels,
        packed,
        cfg,
        guidance_scale,
        tile,
        overlap,
        sets=None,
        raster=None,
        metadata_scale: float | None = None,
        batch: int | None = None,
    ) -> torch.Tensor:
        """MultiDiffusion: the noise prediction ``[B, C, h, w]`` of a latent larger than a window,
        from windows of at most ``tile`` latent pixels that overlap by ``overlap`` or a little
        more (:func:`_windows`, spread evenly), blended with weights that sum to one everywhere
        (:func:`_blend_1d`). Windows of one shape (and number of box tokens) go through the UNet
        ``batch`` at a time (default :data:`TILE_BATCH`), conditions repeated per window, so the
        result is that of one window per call; one window: :meth:`_eps`."""
        _, _, h, w = x.shape
        f = self.vae_scale_factor
        m = self._unet_multiple
        rows, cols = _windows(h, tile, overlap, m), _windows(w, tile, overlap, m)
        if len(rows) == 1 and len(cols) == 1:
            objs = self._grounding(sets, cfg, 0, 0, w * f, h * f)
            return self._eps(
                x, t, text, labels, packed, cfg, guidance_scale, objs, raster, metadata_scale
            )
        wy, wx = _blend_1d(rows, x.device), _blend_1d(cols, x.device)
        n_branch = (3 if metadata_scale is not None else 2) if cfg else 1
        n_objs = 2 if cfg else 1  # box tokens: null and conditional blocks (see _eps)
        groups: dict[tuple[int, int, int], list] = {}  # (rows, cols, box tokens) -> windows
        for (y0, th), ry in zip(rows, wy, strict=True):
            for (x0, tw), rx in zip(cols, wx, strict=True):
                objs = self._grounding(sets, cfg, x0 * f, y0 * f, tw * f, th * f)
                key = (th, tw, 0 if objs is None else objs.shape[1])
                weight = _window_weight(ry, rx).to(x.dtype)
                groups.setdefault(key, []).append((y0, x0, weight, objs))
        acc = torch.zeros_like(x)
        k_max = max(int(batch or getattr(self, "tile_batch", TILE_BATCH)), 1)
        for (th, tw, _), wins in groups.items():
            for i in range(0, len(wins), k_max):
                chunk = wins[i : i + k_max]
                k = len(chunk)
                xb = torch.cat(_crops(x, chunk, th, tw))
                pb = rb = ob = None
                if packed is not None:
                    pb = _window_blocks(_crops(packed, chunk, th, tw, f), n_branch)
                if raster is not None:
                    rb = _window_blocks(_crops(raster, chunk, th, tw), n_branch)
                if sets is not None:
                    ob = _window_blocks([c[3] for c in chunk], n_objs)
                tb = _window_blocks([text] * k, n_branch)
                lb = None if labels is None else _window_blocks([labels] * k, n_branch)
                eps = self._eps(xb, t, tb, lb, pb, cfg, guidance_scale, ob, rb, metadata_scale)
                for e, (y0, x0, weight, _) in zip(eps.chunk(k), chunk, strict=True):
                    acc[:, :, y0 : y0 + th, x0 : x0 + tw] += e * weight
        return acc

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in 0..1 -> scaled latents (the posterior mean: deterministic)."""
        x = image.to(self._execution_device, self.vae.dtype) * 2.0 - 1.0
        if self._normalized_vae:  # TAEF2: raw latents, standardised per channel
            return self.vae.normalize_latents(self.vae.encode(x).latents.float())
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(
        self, latents: torch.Tensor, tile: int | None = None, overlap: int = 0
    ) -> torch.Tensor:
        """Scaled latents ``[B, C, h, w]`` -> images ``[B, 3, f h, f w]`` in 0..1. With ``tile``
        (latent pixels) a larger latent is decoded by windows of at most ``tile`` (:func:`_windows`)
        overlapping by ``overlap`` and at least a quarter of the window (the decoder's GroupNorm
        sees each window's own statistics; decoding runs once, not per step), blended with
        weights that sum to one (ramps over each overlap, in pixels), so the decoder's memory is
        that of one window. A VAE with per-channel latent statistics (:class:`vae.taef2.TAEF2`)
        tiles by itself (cores of its ``tile_size`` with context margins cut away) and ignores
        ``tile``."""
        if self._normalized_vae:  # in place: no full-size temporaries (50 MB each at 4 MP)
            z = self.vae.denormalize_latents(latents.float())
            return self.vae.decode(z).sample.float().mul_(0.5).add_(0.5).clamp_(0, 1)
        z = latents / self.vae.config.scaling_factor
        f = self.vae_scale_factor
        _, _, h, w = z.shape
        if tile is None or (h <= tile and w <= tile):
            return (self.vae.decode(z.to(self.vae.dtype)).sample.float() / 2 + 0.5).clamp(0, 1)
        overlap = min(max(overlap, tile // 4), tile - 1)
        rows, cols = _windows(h, tile, overlap), _windows(w, tile, overlap)
        wy = _blend_1d([(s * f, n * f) for s, n in rows], z.device)  # ramps in pixels
        wx = _blend_1d([(s * f, n * f) for s, n in cols], z.device)
        out = torch.zeros(z.shape[0], 3, h * f, w * f, device=z.device)
        for (y0, th), ry in zip(rows, wy, strict=True):
            for (x0, tw), rx in zip(cols, wx, strict=True):
                img = self.vae.decode(
                    z[:, :, y0 : y0 + th, x0 : x0 + tw].to(self.vae.dtype)
                ).sample.float()
                img = img * _window_weight(ry, rx)
                out[:, :, y0 * f : (y0 + th) * f, x0 * f : (x0 + tw) * f] += img
        return (out / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = "",
        negative_prompt: str | list[str] | None = None,
        gsd: float | list[float] | None = None,
        metadata: dict | None = None,
        layout: Any = None,
        controls: dict[str, torch.Tensor] | None = None,
        control_scales: dict[str, float] | None = None,
        image: Any = None,
        mask: Any = None,
        boxes: Any = None,
        strength: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 30,
        guidance_scale: float = 5.0,
        metadata_guidance_scale: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        control_guidance_start: float = 0.0,
        control_guidance_end: float | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
        mask_feather: int = MASK_FEATHER_PX,
    ):
        """Generate images.

        Args:
            prompt: text (or one per image). ``gsd``: ground sampling distance in metres/pixel.
            metadata: other fields of :data:`earthgen.conditioning.METADATA_FIELDS` (lat, lon, ...).
            layout: class map ``[H, W]`` (ids of :mod:`earthgen.classes`) or a
                :class:`earthgen.geo.layout.Layout`; gives the ``layout`` and ``roads`` controls
                and/or the layout map of a model with a ``layout_encoder``.
            controls: more control maps by name, ``[B, C, H, W]``; ``control_scales``: per-name
                weights.
            boxes: objects to place, an :class:`earthgen.boxes.BoxSet` (pixel corners ``[N, 4, 2]``
                and class names; horizontal or rotated, any N) or one per prompt / image; needs a
                model with a ``box_encoder``.
            image: reference image for image-to-image (with ``strength``) or inpainting /
                outpainting (with ``mask``, ``[H, W]``/``[B, 1, H, W]``, 1 = repaint;
                :func:`outpaint_canvas` makes both for outpainting). Inpainting samples with the
                unmasked latents following the noised input (context for the hole), then pastes the
                decoded image into the input through the mask widened by a soft band of
                ``mask_feather`` pixels (:func:`feather_mask`, :func:`paste_back`): every pixel
                farther than ``mask_feather`` pixels (Euclidean) from the mask is the input pixel,
                unchanged (bit for bit in ``"pil"`` output for a uint8 / PIL input, equal in
                ``"np"``/``"pt"`` output to the input in 0..1); inside the band the decode is
                blended in with a raised-cosine ramp.
            guidance_scale: classifier-free guidance of all conditions together (<= 1: none).
            metadata_guidance_scale: a separate guidance weight for the metadata (``gsd``,
                ``metadata``) alone, with ``guidance_scale`` then weighting text + maps on top of it
                (one more model pass per step; the text's weight is then at least 1); None: guided
                together with the text. Equal to ``guidance_scale`` (> 1) it gives the same images
                as None. The null and metadata-only branches use the negative prompt (empty by
                default).
            tile_size / tile_overlap: latent pixels of the sampling windows for large images
                (at most; default: the UNet's sample size when the image is larger) and of their
                least overlap (default: an eighth of the window, at least 2,
                :func:`default_tile_overlap`); windows are spread evenly and shrunk to fit, so
                the UNet does about 1.3x the image's area per step (:func:`_windows`).
            control_guidance_start / control_guidance_end: the control branch runs on the sampling
                steps that start in this fraction of the run (0..1; step ``i`` of ``n`` starts at
                ``i / n``, so a window from 0 always holds the first step); the end defaults to the
                model's ``config.control_guidance_end`` (1.0 unless the model was packaged with
                another) when control maps are given. Without control maps (text, metadata, boxes
                only) the control branch does not run at all, whatever the window: sampling is the
                UNet alone.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            callback_on_step_end: ``fn(pipe, step, t, {"latents": ...})`` may return new latents.
            mask_feather: width in pixels (default 8) of the soft seam outside the inpainting mask,
                see ``image``; 0 keeps every pixel outside the mask. ``"latent"`` output is not
                pasted back (its latents outside the mask are the input's, up to the VAE).
        """
        # 0. sizes
        if not isinstance(prompt, (str, list, tuple)) or not all(
            isinstance(p, str) for p in ([prompt] if isinstance(prompt, str) else prompt)
        ):
            raise UserInputError("prompt must be a string or a list of strings")
        ref = None if image is None else _to_tensor_image(image)
        lay = getattr(layout, "semantic", layout)
        if height is None or width is None:
            if ref is not None:
                height, width = ref.shape[-2:]
            elif lay is not None:
                height, width = np.asarray(lay).shape[-2:]
            else:
                s = int(self.unet.config.sample_size) * self.vae_scale_factor
                height, width = height or s, width or s
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        sample_size = int(self.unet.config.sample_size)
        lh, lw = height // self.vae_scale_factor, width // self.vae_scale_factor
        if tile_size is None and (lh > sample_size or lw > sample_size):
            tile_size = sample_size
        if tile_overlap is None:  # an eighth of the window (at least 2): about 1.3x redundant work
            tile_overlap = default_tile_overlap(tile_size or 0)
        elif tile_size:
            tile_overlap = min(tile_overlap, tile_size - 1)
        end_given = control_guidance_end is not None
        if not end_given:
            control_guidance_end = self.default_control_guidance_end(with_maps=True)
        if output_type not in ("pil", "np", "pt", "latent"):  # before any work
            raise UserInputError(f"output_type must be pil, np, pt or latent, got {output_type!r}")
        self.check_inputs(
            height,
            width,
            num_inference_steps,
            guidance_scale,
            strength,
            ref,
            mask,
            tile_size,
            tile_overlap,
            control_guidance_start,
            control_guidance_end,
            mask_feather,
        )
        device = self._execution_device
        batch = len(prompts) * num_images_per_prompt
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        cfg = guidance_scale > 1.0 or metadata_guidance_scale is not None

        # 1. encode conditions (unconditional branch first: every condition removed)
        box_sets = self.prepare_boxes(boxes, batch, num_images_per_prompt)
        objs = (
            None if tile_size is not None else self._grounding(box_sets, cfg, 0, 0, width, height)
        )
        raster = self.input_maps(box_sets, layout, cfg, batch, height, width)
        text = self.encode_prompt(prompts)
        labels = self.class_labels(gsd, metadata, batch, None)
        if metadata_guidance_scale is not None:
            if not metadata_guidance_scale >= 0:
                raise UserInputError(
                    f"metadata_guidance_scale must be >= 0, got {metadata_guidance_scale}"
                )
            if labels is None:
                raise UserInputError(
                    "metadata_guidance_scale needs a model that takes metadata (this one has no "
                    "metadata encoder or class embedding)"
                )
            if gsd is None and not metadata:
                raise UserInputError(
                    "metadata_guidance_scale guides the metadata: give gsd= or metadata= too"
                )
        maps = self.dense_controls(layout, controls, batch, height, width)
        if self.controlnet is None and (
            end_given or any(float(v) != 1.0 for v in (control_scales or {}).values())
        ):
            raise UserInputError(
                "this model has no control branch (a layout, if it takes one, goes to the UNet "
                "input): control_guidance_end and control scales do not apply"
            )
        packed = None
        if self.controlnet is not None and maps:  # no control maps: the branch does not run at all
            packed = self.controlnet.pack(
                maps, scales=control_scales, batch_size=batch, size=(height, width)
            )
        if cfg:
            neg = negative_prompt if negative_prompt is not None else ""
            negs = (
                [neg] * batch
                if isinstance(neg, str)
                else [n for n in neg for _ in range(num_images_per_prompt)]
            )
            text = torch.cat([self.encode_prompt(negs), text])
            if labels is not None:
                labels = torch.cat(
                    [
                        self.class_labels(
                            gsd, metadata, batch, torch.ones(batch, dtype=torch.bool)
                        ),
                        labels,
                    ]
                )
            if packed is not None:
                drop_all = torch.ones(batch, dtype=torch.bool)
                packed = torch.cat(
                    [
                        self.controlnet.pack(
                            maps,
                            scales=control_scales,
                            drop=drop_all,
                            batch_size=batch,
                            size=(height, width),
                        ),
                        packed,
                    ]
                )
            if metadata_guidance_scale is not None:  # a metadata-only block: null text, maps, boxes
                text, packed, raster = (
                    None if v is None else torch.cat([v[:batch], v]) for v in (text, packed, raster)
                )
                labels = torch.cat([labels[:batch], labels[batch:], labels[batch:]])

        # 2. timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        init = None
        if ref is not None:
            if tuple(ref.shape[-2:]) != (height, width):
                raise UserInputError(
                    f"image is {ref.shape[-1]}x{ref.shape[-2]}, expected {width}x{height}"
                )
            init = self.encode_image(ref).repeat_interleave(
                batch // ref.shape[0] if ref.shape[0] < batch else 1, 0
            )
            if mask is None:  # image-to-image: start part-way
                start = int(round(num_inference_steps * (1.0 - strength)))
                timesteps = timesteps[min(start, num_inference_steps - 1) :]
        n_t = len(timesteps)
        # the control branch runs on the steps in [start, end) of the run (fractions of its steps)
        # (step i covers [i/n, (i+1)/n); it runs the branch when it starts inside the window, so a
        # window from 0 always has the first step, however few the steps)
        control_on = [
            control_guidance_start - 1e-9 <= i / n_t < control_guidance_end - 1e-9
            for i in range(n_t)
        ]
        if packed is not None and maps and not any(control_on):
            raise UserInputError(
                f"control_guidance_start={control_guidance_start:g} and control_guidance_end="
                f"{control_guidance_end:g} leave none of the {n_t} sampling steps to the control "
                "branch, so the control maps would be ignored: widen the window or use more steps"
            )

        # 3. latents
        shape = (batch, self.unet.config.out_channels, lh, lw)
        if latents is None:
            noise = torch.randn(shape, generator=generator, device="cpu", dtype=torch.float32).to(
                device
            )
        else:
            if tuple(latents.shape) != shape:
                raise UserInputError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
            noise = latents.to(device)
        if init is not None and mask is None:
            x = self.scheduler.add_noise(init, noise, timesteps[:1])
        else:
            x = noise * self.scheduler.init_noise_sigma
        keep = paste = None
        if mask is not None:
            m = torch.as_tensor(
                np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask
            ).float()
            while m.dim() < 4:
                m = m[None]
            if tuple(m.shape[-2:]) != (height, width):
                raise UserInputError(
                    f"mask is {m.shape[-1]}x{m.shape[-2]}, expected {width}x{height}"
                )
            # a latent cell is repainted when any of its pixels is masked
            keep = 1.0 - F.max_pool2d(m.to(device), self.vae_scale_factor)
            paste = feather_mask(m.to(device), int(mask_feather))  # [1|B, 1, H, W] paste weight
        x = x.to(self.unet.dtype)

        # 4. denoising loop (schedulers such as PNDM, LMS, UniPC take no generator)
        step_kw = (
            {"generator": generator}
            if "generator" in inspect.signature(self.scheduler.step).parameters
            else {}
        )
        with self.progress_bar(total=len(timesteps)) as bar:
            for i, t in enumerate(timesteps):
                step_packed = packed if control_on[i] else None
                if tile_size is not None:
                    eps = self._eps_tiled(
                        x,
                        t,
                        text,
                        labels,
                        step_packed,
                        cfg,
                        guidance_scale,
                        tile_size,
                        tile_overlap,
                        box_sets,
                        raster,
                        metadata_guidance_scale,
                    )
                else:
                    eps = self._eps(
                        x,
                        t,
                        text,
                        labels,
                        step_packed,
                        cfg,
                        guidance_scale,
                        objs,
                        raster,
                        metadata_guidance_scale,
                    )
                x = self.scheduler.step(eps, t, x, **step_kw).prev_sample
                if keep is not None:  # inpainting: the kept region follows the known image
                    if i + 1 < len(timesteps):
                        known = self.scheduler.add_noise(init, noise, timesteps[i + 1 : i + 2])
                    else:
                        known = init
                    x = keep * known.to(x.dtype) + (1.0 - keep) * x
                if callback_on_step_end is not None:
                    out = callback_on_step_end(self, i, t, {"latents": x}) or {}
                    x = out.get("latents", x)
                bar.update()

        # 5. decode
        if output_type == "latent":
            images = x
        else:
            img = self.decode_latents(x, tile_size, tile_overlap)
            if paste is not None:  # inpainting: the input outside the mask (+ the band), exactly
                img = paste_back(img, ref, paste)
            if output_type == "pt":
                images = img
            elif output_type in ("np", "pil"):
                arr = img.permute(0, 2, 3, 1).cpu().numpy()
                images = self.numpy_to_pil(arr) if output_type == "pil" else arr
            else:
                raise UserInputError(
                    f"output_type must be pil, np, pt or latent, got {output_type!r}"
                )
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return EarthImageOutput(images=images)


def sampling_scheduler(scheduler):
    """The scheduler a trained pipeline is saved with: DPM-Solver++ on the same noise schedule
    (betas, timesteps, prediction type) for a DDPM training scheduler, whose ancestral sampling
    needs hundreds of steps (at 20 steps its images are blurred towards the mean); any other
    scheduler is returned unchanged. Schedulers hold no weights, so this changes sampling only."""
    if type(scheduler) is DDPMScheduler:
        return DPMSolverMultistepScheduler.from_config(scheduler.config)
    return scheduler


def load_pipeline(name: str) -> EarthImagePipeline:
    """Load a pipeline from a local folder or a hub id (``owner/name``); a missing folder or a
    failed load (unknown repo, offline, incompatible files) is a :class:`UserInputError`."""
    import os

    s = str(name)
    is_hub = s.count("/") == 1 and not s.startswith(("/", ".", "~")) and not os.path.exists(s)
    if not os.path.isdir(s) and not is_hub:
        raise UserInputError(
            f"model not found: {s} (give a pipeline folder or a hub id like owner/name)"
        )
    try:
        return EarthImagePipeline.from_pretrained(s)
    except (OSError, ValueError) as e:  # hub errors (offline, unknown repo) are OSErrors too
        raise UserInputError(f"cannot load the model {s}: {e}") from None


def load_default_image_pipeline(dtype=None, name: str = "image") -> EarthImagePipeline:
    """The packaged image pipeline ``name`` (``image``, or ``boxes``: the box-conditioned one),
    float32 by default (its fp16 weights are up-cast on load: CPU kernels are float32)."""
    if name not in PIPELINE_NAMES:
        raise UserInputError(
            f"{name!r} is not a packaged image pipeline; choose from {', '.join(PIPELINE_NAMES)}"
        )
    path = resolve_model(None, name)
    try:
        return EarthImagePipeline.from_pretrained(path, dtype=dtype or torch.float32)
    except (OSError, ValueError) as e:
        raise UserInputError(f"cannot load the packaged {name} model {path}: {e}") from None


def outpaint_canvas(
    image: np.ndarray,
    left: int,
    right: int,
    top: int,
    bottom: int,  # [H, W, 3]
    multiple: int = 8,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Extend an image by ``left/right/top/bottom`` pixels for outpainting: the canvas (borders
    filled with the edge pixels, a start for the VAE), the inpainting mask (1 = generate) and
    where the original sits, ``(row, col)``. The canvas is rounded up to a multiple of
    ``multiple`` on the right and bottom. Pass both to the pipeline (``image=``, ``mask=``): its
    output keeps the original's pixels exactly except within ``mask_feather`` (default
    :data:`MASK_FEATHER_PX`) pixels of the new borders, the soft seam (``mask_feather=0``: all of
    them)."""
    pads = [int(v) for v in (left, right, top, bottom)]
    if min(pads) < 0 or sum(pads) == 0:
        raise UserInputError(
            f"outpainting needs borders >= 0 pixels and > 0 on one side, got {pads}"
        )
    rgb = np.asarray(image)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise UserInputError(f"outpainting needs an RGB image [H, W, 3], got shape {rgb.shape}")
    left, right, top, bottom = pads
    h, w = rgb.shape[0] + top + bottom, rgb.shape[1] + left + right
    right += -(-w // multiple) * multiple - w
    bottom += -(-h // multiple) * multiple - h
    canvas = np.pad(rgb, ((top, bottom), (left, right), (0, 0)), mode="edge")
    mask = np.ones(canvas.shape[:2], np.float32)
    mask[top : top + rgb.shape[0], left : left + rgb.shape[1]] = 0.0
    return canvas, mask, (top, left)


def save_geotiff(path, image: Any, crs: Any, transform: Any):
    """Write a generated image (PIL, ``[H, W, 3]`` array in 0..1 or uint8) as an RGB GeoTIFF with
    the CRS and transform of the layout it was generated from."""
    from earthgen.io import write_geotiff

    arr = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    return write_geotiff(
        path, np.moveaxis(arr, -1, 0), crs, transform, band_descriptions=["red", "green", "blue"]
    )
