"""A scene on disk, one file per chunk: what :class:`earthgen.pipelines.scene.EarthScenePipeline`
streams when called with ``stream_to=`` (docs/scene.md, "Memory").

A chunk is the voxels one window keeps (its *core*, a rectangle of columns) with their colours and
surfels, written as an uncompressed ``.npz`` in the store's folder as soon as the window is done:

- ``coords`` ``[n, 3]`` int32 voxel indices (x east, y north, z up) from the scene's origin;
- ``colors`` ``[n, 3]`` uint8 voxel colours;
- ``s_means`` ``[m, 3]``, ``s_quats`` ``[m, 4]``, ``s_scales`` ``[m, S]``, ``s_opacities`` ``[m]``,
  ``s_colors`` ``[m, 3]`` float32 surfels (metres, scene frame), ``s_voxel`` ``[m]`` int32 row of
  each surfel's voxel *in the chunk*.

Only small per-scene state stays in memory: per chunk its column box and counts, the scene's
voxel bounds and two ``[X, Y]`` int32 maps (top and bottom voxel of every column; 8 bytes per
column, 8 MB for 1 km² at 1 m). Reading the whole scene back (:meth:`SceneStore.load`) costs what
the in-memory output costs; :meth:`SceneStore.read` / iteration read one chunk at a time.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SURFEL_KEYS = ("means", "quats", "scales", "opacities", "colors", "voxel")
EMPTY_TOP = -1  # top of an empty column
EMPTY_BOTTOM = np.iinfo(np.int32).max  # bottom of an empty column


@dataclass
class Chunk:
    """One chunk file: ``box`` ``(x0, y0, x1, y1)`` the columns its voxels lie in (global voxel
    indices, half-open), ``voxels`` / ``surfels`` its counts, ``window`` True for a window's core
    (the tiles of the exports), False for voxels added later (e.g. the walls of the DEM raise)."""

    name: str
    box: tuple[int, int, int, int]
    voxels: int
    surfels: int
    window: bool = True


class SceneStore:
    """Chunks of one scene of ``shape = (X, Y)`` columns in ``folder`` (created; its chunk files
    are the store's: :meth:`delete` removes the folder).

    ``top`` / ``bottom`` ``[X, Y]`` int32: highest / lowest voxel ``z`` of every column
    (``EMPTY_TOP`` / ``EMPTY_BOTTOM`` where empty), kept up to date by :meth:`add`;
    :meth:`bounds` the smallest and largest voxel index of the scene.
    """

    def __init__(self, folder: str | os.PathLike, shape: tuple[int, int]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shape = (int(shape[0]), int(shape[1]))
        self.chunks: list[Chunk] = []
        self.top = np.full(self.shape, EMPTY_TOP, np.int32)
        self.bottom = np.full(self.shape, EMPTY_BOTTOM, np.int32)

    # --- counts ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def n_voxels(self) -> int:
        return sum(c.voxels for c in self.chunks)

    @property
    def n_surfels(self) -> int:
        return sum(c.surfels for c in self.chunks)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)`` ``[3]`` int64: the smallest and largest voxel index (x, y, z) of the scene,
        from the column maps (ValueError when the scene is empty)."""
        full = self.top >= 0
        if not full.any():
            raise ValueError("the scene is empty")
        xs, ys = np.nonzero(full.any(1))[0], np.nonzero(full.any(0))[0]
        lo = np.array([xs[0], ys[0], self.bottom[full].min()], np.int64)
        hi = np.array([xs[-1], ys[-1], self.top[full].max()], np.int64)
        return lo, hi

    # --- writing --------------------------------------------------------------------------------
    def add(
        self,
        coords: np.ndarray,
        colors: np.ndarray,
        surfels: dict,
        box: tuple[int, int, int, int],
        window: bool = True,
    ) -> Chunk:
        """Write a chunk: ``coords`` ``[n, 3]`` (global voxel indices, inside ``box``), ``colors``
        ``[n, 3]`` uint8, ``surfels`` (``SURFEL_KEYS``, ``voxel`` rows into ``coords``). Updates
        the column maps and bounds."""
        chunk = Chunk(
            f"chunk_{len(self.chunks):05d}.npz",
            tuple(int(v) for v in box),
            len(coords),
            len(surfels["means"]),
            window,
        )
        self._write(chunk, coords, colors, surfels)
        self.chunks.append(chunk)
        return chunk

    def replace(self, i: int, coords: np.ndarray, colors: np.ndarray, surfels: dict) -> None:
        """Rewrite chunk ``i`` with new contents (same box); the column maps are recomputed from
        ``coords`` for the columns of its box."""
        c = self.chunks[i]
        c.voxels, c.surfels = len(coords), len(surfels["means"])
        x0, y0, x1, y1 = c.box
        self.top[x0:x1, y0:y1] = EMPTY_TOP
        self.bottom[x0:x1, y0:y1] = EMPTY_BOTTOM
        self._write(c, coords, colors, surfels)

    def _write(self, chunk: Chunk, coords: np.ndarray, colors: np.ndarray, surfels: dict) -> None:
        c = np.asarray(coords, dtype=np.int32).reshape(-1, 3)
        arrays = {"coords": c, "colors": np.asarray(colors, dtype=np.uint8).reshape(-1, 3)}
        for k in SURFEL_KEYS:
            v = np.asarray(surfels[k])
            arrays["s_" + k] = v.astype(np.int32) if k == "voxel" else v
        tmp = self.folder / (chunk.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, self.folder / chunk.name)
        if len(c):
            np.maximum.at(self.top, (c[:, 0], c[:, 1]), c[:, 2])
            np.minimum.at(self.bottom, (c[:, 0], c[:, 1]), c[:, 2])

    # --- reading --------------------------------------------------------------------------------
    def read(self, i: int, keys: tuple[str, ...] | None = None) -> dict:
        """Chunk ``i`` as ``{"coords", "colors", "surfels": {...}}`` (surfel ``voxel`` int64 rows
        in the chunk); ``keys`` (e.g. ``("coords",)``, ``("surfels",)``) reads only those."""
        keys = keys or ("coords", "colors", "surfels")
        with np.load(self.folder / self.chunks[i].name, allow_pickle=False) as z:
            out: dict = {k: z[k] for k in ("coords", "colors") if k in keys}
            if "surfels" in keys:
                s = {k: z["s_" + k] for k in SURFEL_KEYS}
                s["voxel"] = s["voxel"].astype(np.int64)
                out["surfels"] = s
        return out

    def __iter__(self) -> Iterator[dict]:
        """The chunks in order, one at a time (:meth:`read`)."""
        for i in range(len(self.chunks)):
            yield self.read(i)

    def load(self, key: str) -> np.ndarray | dict:
        """The whole scene's ``"coords"`` ``[N, 3]`` int32, ``"colors"`` ``[N, 3]`` uint8 or
        ``"surfels"`` (dict, ``voxel`` int64 rows into ``coords``) in chunk order: as much memory
        as the in-memory output (15 bytes per voxel, 64 per surfel)."""
        parts = [self.read(i, (key,))[key] for i in range(len(self.chunks))]
        if key == "coords":
            return np.concatenate(parts) if parts else np.zeros((0, 3), np.int32)
        if key == "colors":
            return np.concatenate(parts) if parts else np.zeros((0, 3), np.uint8)
        if not parts:  # as the in-memory output of an empty scene (float32 zeros)
            return {k: np.zeros(0, np.float32) for k in SURFEL_KEYS}
        base = np.cumsum([0] + [c.voxels for c in self.chunks[:-1]])
        out = {k: np.concatenate([p[k] for p in parts]) for k in SURFEL_KEYS if k != "voxel"}
        out["voxel"] = np.concatenate([p["voxel"] + b for p, b in zip(parts, base, strict=True)])
        return out

    def height(self, voxel_size: float) -> np.ndarray:
        """Surface height ``[Y, X]`` float32 (metres above the base, ``(top + 1) * voxel_size``,
        north-up rows, NaN for empty columns), as :func:`earthgen.pipelines.scene.surface_height`
        of all the voxels."""
        top = self.top.astype(np.int64).T[::-1]
        return np.where(top >= 0, (top + 1) * voxel_size, np.nan).astype(np.float32)

    def delete(self) -> None:
        """Remove the folder and its chunk files."""
        shutil.rmtree(self.folder, ignore_errors=True)
