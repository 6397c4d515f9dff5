"""One box format for horizontal and rotated boxes: four corners, eight numbers.

``corners`` arrays are ``[N, 4, 2]`` float (x, y) in pixels, image convention (x right, y down),
in the order the box's edges are walked (DOTA's order: the first point is where the box "starts";
for horizontal boxes made here it is the top-left, then clockwise on screen). A horizontal box is
just a rotated box with angle 0, so every consumer (GLIGEN-style box tokens, exporters, metrics)
handles both with the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def hbb_to_corners(xyxy: np.ndarray) -> np.ndarray:
    """``[N, 4]`` (x_min, y_min, x_max, y_max) -> ``[N, 4, 2]`` corners (TL, TR, BR, BL)."""
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = b.T
    return np.stack(
        [
            np.stack([x0, y0], -1),
            np.stack([x1, y0], -1),
            np.stack([x1, y1], -1),
            np.stack([x0, y1], -1),
        ],
        axis=1,
    )


def corners_to_hbb(corners: np.ndarray) -> np.ndarray:
    """``[N, 4, 2]`` corners -> ``[N, 4]`` enclosing horizontal boxes
    (x_min, y_min, x_max, y_max)."""
    c = np.asarray(corners, dtype=np.float64).reshape(-1, 4, 2)
    return np.concatenate([c.min(axis=1), c.max(axis=1)], axis=1)


def obb_to_corners(obb: np.ndarray) -> np.ndarray:
    """``[N, 5]`` (cx, cy, w, h, angle) -> ``[N, 4, 2]``. ``angle`` in radians, rotating the box's
    width axis from +x towards +y (clockwise on screen, since y points down)."""
    b = np.asarray(obb, dtype=np.float64).reshape(-1, 5)
    cx, cy, w, h, a = b.T
    ca, sa = np.cos(a), np.sin(a)
    ux, uy = ca * w / 2, sa * w / 2  # half width axis
    vx, vy = -sa * h / 2, ca * h / 2  # half height axis
    pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    return np.stack(
        [np.stack([cx + i * ux + j * vx, cy + i * uy + j * vy], -1) for i, j in pts], axis=1
    )


def corners_to_obb(corners: np.ndarray) -> np.ndarray:
    """``[N, 4, 2]`` -> ``[N, 5]`` (cx, cy, w, h, angle): the best rectangle through four corners
    (exact for rectangles); w is the length of edge 0->1, angle its direction in [-pi, pi)."""
    c = np.asarray(corners, dtype=np.float64).reshape(-1, 4, 2)
    center = c.mean(axis=1)
    e0 = c[:, 1] - c[:, 0]
    e1 = c[:, 2] - c[:, 1]
    w = 0.5 * (np.linalg.norm(e0, axis=1) + np.linalg.norm(c[:, 2] - c[:, 3], axis=1))
    h = 0.5 * (np.linalg.norm(e1, axis=1) + np.linalg.norm(c[:, 3] - c[:, 0], axis=1))
    a = np.arctan2(e0[:, 1], e0[:, 0])
    return np.concatenate([center, w[:, None], h[:, None], a[:, None]], axis=1)


def polygon_area(corners: np.ndarray) -> np.ndarray:
    """Unsigned shoelace area of ``[N, K, 2]`` polygons -> ``[N]``."""
    c = np.asarray(corners, dtype=np.float64)
    c = c.reshape(-1, c.shape[-2], 2)
    x, y = c[..., 0], c[..., 1]
    return 0.5 * np.abs((x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1))


def polygon_to_corners(polygon) -> np.ndarray:
    """Oriented box ``[4, 2]`` of a shapely geometry: its minimum-area rotated rectangle."""
    from shapely import minimum_rotated_rectangle

    rect = minimum_rotated_rectangle(polygon)
    if rect.geom_type != "Polygon":  # degenerate (point / line): a zero-area box around it
        x0, y0, x1, y1 = rect.bounds
        return hbb_to_corners(np.array([[x0, y0, x1, y1]]))[0]
    return np.asarray(rect.exterior.coords, dtype=np.float64)[:4]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of rotated boxes ``[N, 4, 2]`` x ``[M, 4, 2]`` -> ``[N, M]``
    (exact, shapely)."""
    import shapely

    pa = shapely.polygons(np.asarray(a, dtype=np.float64).reshape(-1, 4, 2))
    pb = shapely.polygons(np.asarray(b, dtype=np.float64).reshape(-1, 4, 2))
    out = np.zeros((len(pa), len(pb)))
    if not len(pa) or not len(pb):
        return out
    pa = shapely.make_valid(pa)
    pb = shapely.make_valid(pb)
    inter = shapely.area(shapely.intersection(pa[:, None], pb[None, :]))
    union = shapely.area(pa)[:, None] + shapely.area(pb)[None, :] - inter
    np.divide(inter, union, out=out, where=union > 0)
    return out


@dataclass
class BoxSet:
    """Labelled boxes of one image. ``corners``: ``[N, 4, 2]`` pixels; ``labels``: N class names."""

    corners: np.ndarray
    labels: list[str]
    scores: np.ndarray | None = None  # [N] detector confidences, if any
    difficult: np.ndarray | None = None  # [N] bool (DOTA's difficult flag)
    rotated: bool = True  # False when every box is axis-aligned by construction
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.corners = np.asarray(self.corners, dtype=np.float64).reshape(-1, 4, 2)
        if len(self.labels) != len(self.corners):
            raise ValueError(f"{len(self.corners)} boxes but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.corners)

    @property
    def hbb(self) -> np.ndarray:
        """``[N, 4]`` enclosing horizontal boxes (x_min, y_min, x_max, y_max)."""
        return corners_to_hbb(self.corners)

    def normalized(self, width: int, height: int) -> np.ndarray:
        """``[N, 8]`` corners divided by the image size (the model's box-token input)."""
        return (self.corners / np.array([width, height], dtype=np.float64)).reshape(-1, 8)
