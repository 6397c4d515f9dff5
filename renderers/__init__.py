"""Rendering and export of 3D scenes.

- :mod:`renderers.cameras`: intrinsics from a field of view, look-at, orbit and nadir rigs;
- :mod:`renderers.rasterization`: a pure-torch 2DGS rasterizer with the signature of
  ``gsplat.rasterization_2dgs`` (gsplat's CUDA kernels are used when installed and on a GPU);
- :mod:`renderers.mesh`: voxels and height fields to triangle meshes;
- :mod:`renderers.export`: Gaussian-splat PLY, GLB / PLY / OBJ meshes, point-cloud PLY;
- :mod:`renderers.metrics`: PSNR and SSIM.

Importing the package imports none of these (and never gsplat); they load on first use.
"""

_EXPORTS = {
    "rasterization_2dgs": "renderers.rasterization",
    "rasterization_2dgs_torch": "renderers.rasterization",
    "render_surfels": "renderers.rasterization",
    "intrinsics_from_fov": "renderers.cameras",
    "look_at": "renderers.cameras",
    "orbit_rig": "renderers.cameras",
    "nadir_rig": "renderers.cameras",
    "voxels_to_mesh": "renderers.mesh",
    "heightfield_to_mesh": "renderers.mesh",
    "save_gaussians_ply": "renderers.export",
    "load_gaussians_ply": "renderers.export",
    "save_mesh": "renderers.export",
    "save_point_cloud": "renderers.export",
    "psnr": "renderers.metrics",
    "ssim": "renderers.metrics",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'renderers' has no attribute {name!r}")
