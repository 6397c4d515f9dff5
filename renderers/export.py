"""Write scenes to files other tools open: Gaussian splats as the PLY of 3DGS viewers, meshes as
GLB / PLY / OBJ, point clouds as binary PLY (docs/export.md).

Arrays may be NumPy arrays or torch tensors (detached and moved to the CPU). Every file is
written atomically (:func:`earthgen.io.atomic_path`). Only ``save_mesh`` needs a third-party
package (trimesh, imported when called); the PLY readers and writers here are self-contained, so
open3d is never needed.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from earthgen_base.errors import MissingDependencyError, UserInputError
from earthgen_base.io import atomic_path
from renderers.mesh import colors_to_uint8

SH_C0 = 0.28209479177387814  # degree-0 real spherical harmonic, 1 / (2 sqrt(pi))
SURFEL_THICKNESS = 1e-3  # third scale written for 2D surfels, relative to the smaller scale
OPACITY_EPS = 1e-7  # opacities are clipped to [eps, 1 - eps] before the logit
_SURFEL_COMMENT = "earthgen 2dgs surfels: scale_2 is a thin thickness, not a fitted scale"

_PLY_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}
_NP_TO_PLY = {
    "i1": "char",
    "u1": "uchar",
    "i2": "short",
    "u2": "ushort",
    "i4": "int",
    "u4": "uint",
    "f4": "float",
    "f8": "double",
}


def _np(x: Any, name: str) -> np.ndarray:
    """NumPy array of an array-like or torch tensor (detached, CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype == object:
        raise UserInputError(f"{name} must be a numeric array, got {type(x).__name__}")
    return a


def _float_array(x: Any, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """``x`` as a finite float64 array of ``shape`` (None = any size); UserInputError otherwise."""
    a = _np(x, name)
    if a.ndim != len(shape) or any(s is not None and a.shape[i] != s for i, s in enumerate(shape)):
        want = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
        raise UserInputError(f"{name} must have shape {want}, got {tuple(a.shape)}")
    if a.dtype.kind not in "fiub":
        raise UserInputError(f"{name} must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise UserInputError(f"{name} contains NaN or infinite values")
    return a


# ----------------------------------------------------------------------------------------------
# Gaussian splats


def save_gaussians_ply(
    path: str | os.PathLike,
    means: Any,
    quats: Any,
    scales: Any,
    opacities: Any,
    colors: Any = None,
    sh: Any = None,
    surfel_thickness: float = SURFEL_THICKNESS,
) -> Path:
    """Write Gaussians (or 2D surfels) as the binary PLY that 3DGS viewers read.

    ``means`` ``[N, 3]`` metres; ``quats`` ``[N, 4]`` rotations as (w, x, y, z), any non-zero
    norm (normalised here); ``scales`` ``[N, 3]`` standard deviations in metres along the
    rotated x, y, z axes, or ``[N, 2]`` for 2D surfels (2DGS: a disc in the rotated x-y plane,
    its normal the rotated z axis), written with
    ``scale_2 = surfel_thickness * min(scale_0, scale_1)``; ``opacities`` ``[N]`` (or
    ``[N, 1]``) in [0, 1], clipped to ``[1e-7, 1 - 1e-7]``; colour as either ``colors``
    ``[N, 3]`` RGB (float in [0, 1] or uint8), stored as the degree-0 SH coefficient
    ``(rgb - 0.5) / SH_C0``, or ``sh`` ``[N, K, 3]`` SH coefficients (K = 1, 4, 9, 16:
    degree 0-3), stored as they are.

    Stored values are pre-activation as in 3DGS: ``opacity`` = logit, ``scale_*`` = natural log,
    ``rot_*`` = the normalised quaternion (w, x, y, z), ``f_rest_*`` channel-major (all red
    coefficients of degrees >= 1, then green, then blue). ``nx ny nz`` hold the surfel normal
    for ``[N, 2]`` scales and zeros otherwise. Returns ``path``.
    """
    mu = _float_array(means, "means", (None, 3))
    n = len(mu)
    q = _float_array(quats, "quats", (n, 4))
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    if (norm < 1e-12).any():
        raise UserInputError("quats contain zero-length quaternions")
    q = q / norm
    s = _np(scales, "scales")
    if s.ndim != 2 or s.shape[0] != n or s.shape[1] not in (2, 3):
        raise UserInputError(f"scales must be [{n}, 2] (surfels) or [{n}, 3], got {tuple(s.shape)}")
    s = _float_array(s, "scales", (n, s.shape[1]))
    if (s <= 0).any():
        raise UserInputError("scales must be > 0 metres (they are stored as logarithms)")
    surfels = s.shape[1] == 2
    if surfels:
        if not (np.isfinite(surfel_thickness) and surfel_thickness > 0):
            raise UserInputError(f"surfel_thickness must be > 0, got {surfel_thickness}")
        s = np.concatenate([s, surfel_thickness * s.min(axis=1, keepdims=True)], axis=1)
    o = _np(opacities, "opacities")
    o = _float_array(o.reshape(n) if o.shape == (n, 1) else o, "opacities", (n,))
    if n and (o.min() < 0 or o.max() > 1):
        raise UserInputError(
            f"opacities must be in [0, 1] (activated), got {o.min():g}..{o.max():g}"
        )
    o = np.clip(o, OPACITY_EPS, 1 - OPACITY_EPS)

    if (colors is None) == (sh is None):
        raise UserInputError("give exactly one of colors [N, 3] (RGB) or sh [N, K, 3]")
    if colors is not None:
        c = _np(colors, "colors")
        if c.shape != (n, 3):
            raise UserInputError(f"colors must be [{n}, 3] RGB, got {tuple(c.shape)}")
        if c.dtype == np.uint8:
            rgb = c.astype(np.float64) / 255.0
        else:
            rgb = _float_array(c, "colors", (n, 3))
            if n and (rgb.min() < 0 or rgb.max() > 1):
                raise UserInputError(
                    "float colors must be RGB in [0, 1]; pass sh= for SH coefficients"
                )
        coef = ((rgb - 0.5) / SH_C0)[:, None, :]  # [N, 1, 3]
    else:
        sh_arr = _np(sh, "sh")
        k = sh_arr.shape[1] if sh_arr.ndim == 3 else 0
        if (
            sh_arr.ndim != 3
            or sh_arr.shape[0] != n
            or sh_arr.shape[2] != 3
            or k < 1
            or math.isqrt(k) ** 2 != k
        ):
            raise UserInputError(
                f"sh must be [{n}, K, 3] with K = (degree + 1)^2 (1, 4, 9, 16), "
                f"got {tuple(sh_arr.shape)}"
            )
        coef = _float_array(sh_arr, "sh", (n, k, 3))
    K = coef.shape[1]
    normals = np.zeros((n, 3))
    if surfels:  # third column of the rotation matrix of (w, x, y, z)
        w, x, y, z = q.T
        normals = np.stack([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)], 1)
    rest = coef[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * (K - 1))  # channel-major
    cols = [mu, normals, coef[:, 0, :], rest, np.log(o / (1 - o))[:, None], np.log(s), q]
    data = np.ascontiguousarray(np.concatenate(cols, axis=1).astype("<f4"))
    names = (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(3 * (K - 1))]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )
    comments = [
        "earthgen gaussian splats (3DGS layout): opacity logit, scale log metres, "
        "rot quaternion wxyz"
    ]
    if surfels:
        comments.append(_SURFEL_COMMENT)
    _write_ply(path, n, [(nm, "f4") for nm in names], data.tobytes(), comments)
    return Path(path)


def load_gaussians_ply(path: str | os.PathLike) -> dict[str, Any]:
    """Read a 3DGS-layout Gaussian PLY (ours, or one from 3DGS / 2DGS / gsplat trainers).

    Returns activated float32 torch tensors: ``means`` ``[N, 3]``, ``quats`` ``[N, 4]``
    (w, x, y, z, normalised), ``scales`` ``[N, S]`` metres (exp; S = 2 for files written from
    surfels by :func:`save_gaussians_ply` or for 2DGS files with two scales, else 3),
    ``opacities`` ``[N]`` (sigmoid), ``sh`` ``[N, K, 3]`` (all SH coefficients, degree 0 first),
    ``colors`` ``[N, 3]`` (RGB from the degree-0 term, ``0.5 + SH_C0 * f_dc``, clipped to
    [0, 1]) and ``normals`` ``[N, 3]`` (as stored).
    """
    import torch

    header, vertex = _read_ply_vertices(path)
    names = vertex.dtype.names or ()

    def cols(prefix_names: list[str]) -> np.ndarray:
        missing = [nm for nm in prefix_names if nm not in names]
        if missing:
            raise UserInputError(
                f"{path}: not a Gaussian-splat PLY, vertex properties "
                f"{', '.join(missing)} are missing"
            )
        return (
            np.stack([vertex[nm].astype(np.float64) for nm in prefix_names], axis=1)
            if prefix_names
            else np.zeros((len(vertex), 0))
        )

    n = len(vertex)
    means = cols(["x", "y", "z"])
    dc = cols(["f_dc_0", "f_dc_1", "f_dc_2"])
    n_rest = sum(1 for nm in names if re.fullmatch(r"f_rest_\d+", nm))
    k = 1 + n_rest // 3
    if n_rest % 3 or math.isqrt(k) ** 2 != k:
        raise UserInputError(f"{path}: {n_rest} f_rest properties is not 3 * ((degree + 1)^2 - 1)")
    rest = cols([f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, k - 1).transpose(0, 2, 1)
    sh = np.concatenate([dc[:, None, :], rest], axis=1)
    n_scales = sum(1 for nm in names if re.fullmatch(r"scale_\d+", nm))
    if n_scales not in (2, 3):
        raise UserInputError(f"{path}: expected 2 or 3 scale_* properties, found {n_scales}")
    if n_scales == 3 and _SURFEL_COMMENT in header:
        n_scales = 2
    scales = np.exp(cols([f"scale_{i}" for i in range(n_scales)]))
    q = cols(["rot_0", "rot_1", "rot_2", "rot_3"])
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    opac = 1.0 / (1.0 + np.exp(-cols(["opacity"])[:, 0]))
    normals = cols(["nx", "ny", "nz"]) if {"nx", "ny", "nz"} <= set(names) else np.zeros((n, 3))
    out = {
        "means": means,
        "quats": q,
        "scales": scales,
        "opacities": opac,
        "sh": sh,
        "colors": np.clip(0.5 + SH_C0 * dc, 0.0, 1.0),
        "normals": normals,
    }
    return {
        key: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for key, v in out.items()
    }


# ----------------------------------------------------------------------------------------------
# Meshes


def to_y_up(points: Any) -> np.ndarray:
    """Our z-up world ``[..., 3]`` -> glTF's y-up frame: a -90 degree rotation about x,
    ``(x, y, z) -> (x, z, -y)`` (east stays +x, up becomes +y, north becomes -z)."""
    p = np.asarray(points)
    return np.stack([p[..., 0], p[..., 2], -p[..., 1]], axis=-1)


def save_mesh(
    path: str | os.PathLike,
    vertices: Any,
    faces: Any,
    vertex_colors: Any = None,
    y_up: bool | None = None,
) -> Path:
    """Write a triangle mesh; the format follows the extension: ``.glb``, ``.ply`` or ``.obj``.

    ``vertices`` ``[V, 3]`` metres (z up), ``faces`` ``[F, 3]`` vertex indices (counter-clockwise
    seen from outside), ``vertex_colors`` ``[V, 3|4]`` uint8 or float in [0, 1] (optional).
    ``y_up``: rotate to a y-up frame with :func:`to_y_up`; by default True for GLB (glTF is y-up:
    gradio's Model3D and glTF viewers show the ground level) and False for PLY / OBJ, which
    keep our z-up coordinates. Positions are float32 in every format. Returns ``path``.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("glb", "ply", "obj"):
        raise UserInputError(f"cannot write a mesh as '{path.suffix}': use .glb, .ply or .obj")
    v = _float_array(vertices, "vertices", (None, 3))
    f = _np(faces, "faces")
    if f.ndim != 2 or f.shape[1] != 3 or f.dtype.kind not in "iu":
        raise UserInputError(f"faces must be integer [F, 3], got {f.dtype} {tuple(f.shape)}")
    if len(v) == 0 or len(f) == 0:
        raise UserInputError("the mesh is empty (no vertices or no faces)")
    if f.min() < 0 or f.max() >= len(v):
        raise UserInputError(f"faces index vertices 0..{len(v) - 1}, found {f.min()}..{f.max()}")
    col = None if vertex_colors is None else colors_to_uint8(vertex_colors, len(v), "vertex_colors")
    if y_up if y_up is not None else fmt == "glb":
        v = to_y_up(v)
    try:
        import trimesh
    except ImportError as e:
        raise MissingDependencyError("trimesh", purpose="mesh export") from e
    mesh = trimesh.Trimesh(
        vertices=v.astype(np.float32),
        faces=f.astype(np.int64),
        vertex_colors=col,
        process=False,
        validate=False,
    )
    with atomic_path(path) as tmp:
        mesh.export(str(tmp), file_type=fmt)
    return path


# ----------------------------------------------------------------------------------------------
# Point clouds


def save_point_cloud(
    path: str | os.PathLike,
    points: Any,
    colors: Any = None,
    fields: dict[str, Any] | None = None,
    double: bool = False,
) -> Path:
    """Write points ``[N, 3]`` (metres) as a binary little-endian PLY: properties ``x y z``
    (float32, or float64 with ``double=True`` for large map coordinates), then ``red green blue``
    (uchar; from ``colors`` ``[N, 3]`` uint8 or float in [0, 1]), then each of ``fields``
    (name -> ``[N]`` array, e.g. ``{"semantic": classes}``) in its own type: (u)int8/16/32,
    float32/64; bool is written as uchar, int64 as int when it fits. Returns ``path``."""
    p = _float_array(points, "points", (None, 3))
    n = len(p)
    xyz = "f8" if double else "f4"
    props: list[tuple[str, str]] = [("x", xyz), ("y", xyz), ("z", xyz)]
    arrays: list[np.ndarray] = [p[:, 0], p[:, 1], p[:, 2]]
    if colors is not None:
        c = colors_to_uint8(colors, n)
        if c.shape[1] != 3:
            raise UserInputError(f"point colors must be [{n}, 3] RGB, got {tuple(c.shape)}")
        props += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        arrays += [c[:, 0], c[:, 1], c[:, 2]]
    for name, value in (fields or {}).items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name in {nm for nm, _ in props}:
            raise UserInputError(
                f"field name {name!r} must be a new identifier (not x, y, z, red, ...)"
            )
        a = _np(value, f"field {name!r}")
        if a.shape != (n,):
            raise UserInputError(f"field {name!r} must have shape [{n}], got {tuple(a.shape)}")
        if a.dtype == bool:
            a = a.astype(np.uint8)
        elif a.dtype.kind in "iu" and a.dtype.itemsize == 8:
            if n and (a.min() < -(2**31) or a.max() >= 2**31):
                raise UserInputError(f"field {name!r} does not fit a 32-bit PLY int")
            a = a.astype(np.int32)
        code = a.dtype.str.lstrip("<>|=")
        if code not in _NP_TO_PLY:
            raise UserInputError(
                f"field {name!r} has dtype {a.dtype}; use (u)int8/16/32 or float32/64"
            )
        props.append((name, code))
        arrays.append(a)
    rec = np.empty(n, dtype=[(nm, "<" + code) for nm, code in props])
    for (nm, _), a in zip(props, arrays, strict=True):
        rec[nm] = a
    _write_ply(path, n, props, rec.tobytes(), ["earthgen point cloud, x y z in metres (z up)"])
    return Path(path)


# ----------------------------------------------------------------------------------------------
# PLY plumbing


def _write_ply(
    path: str | os.PathLike, n: int, props: list[tuple[str, str]], body: bytes, comments: list[str]
) -> None:
    """Binary little-endian PLY with one ``vertex`` element of ``n`` records ``body``."""
    lines = [
        "ply",
        "format binary_little_endian 1.0",
        *[f"comment {c}" for c in comments],
        f"element vertex {n}",
        *[f"property {_NP_TO_PLY[code]} {nm}" for nm, code in props],
        "end_header",
    ]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(("\n".join(lines) + "\n").encode("ascii"))
            fh.write(body)


def _read_ply_vertices(path: str | os.PathLike) -> tuple[str, np.ndarray]:
    """Header text and the ``vertex`` element (structured array) of a binary PLY file."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"no such file: {path}")
    raw = path.read_bytes()
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise UserInputError(f"{path}: not a PLY file (no 'ply' magic or no end_header)")
    nl = raw.find(b"\n", end)
    header = raw[:end].decode("ascii", errors="replace")
    offset = nl + 1 if nl >= 0 else len(raw)
    fmt, elements = None, []  # [(name, count, [(prop, dtype code)])]
    for line in header.splitlines():
        tok = line.split()
        if not tok or tok[0] in ("ply", "comment", "obj_info"):
            continue
        if tok[0] == "format":
            fmt = tok[1] if len(tok) > 1 else None
        elif tok[0] == "element" and len(tok) == 3:
            elements.append((tok[1], int(tok[2]), []))
        elif tok[0] == "property" and elements:
            if tok[1] == "list":
                elements[-1][2].append((tok[-1], None))
            elif tok[1] in _PLY_TYPES and len(tok) == 3:
                elements[-1][2].append((tok[2], _PLY_TYPES[tok[1]]))
            else:
                raise UserInputError(f"{path}: cannot parse header line {line!r}")
    if fmt not in ("binary_little_endian", "binary_big_endian"):
        raise UserInputError(f"{path}: only binary PLY files are read here, this one is {fmt}")
    order = "<" if fmt == "binary_little_endian" else ">"
    for name, count, props in elements:
        if any(code is None for _, code in props):
            if name == "vertex":
                raise UserInputError(
                    f"{path}: list properties in the vertex element are not supported"
                )
            break  # variable-size element: the vertex element must come before it
        dt = np.dtype([(nm, order + code) for nm, code in props])
        if name == "vertex":
            if len(raw) < offset + count * dt.itemsize:
                raise UserInputError(f"{path}: truncated ({count} vertices announced)")
            return header, np.frombuffer(raw, dtype=dt, count=count, offset=offset)
        offset += count * dt.itemsize
    raise UserInputError(f"{path}: no vertex element found")
