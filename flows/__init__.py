"""Flow matching for EarthGen's generators: path, loss and solver as small separate objects
(docs/flows.md). Time convention (docs/conventions.md): ``t = 0`` is noise, ``t = 1`` is data,
``x_t = (1 - t) x_0 + t x_1``, velocity target ``x_1 - x_0``; solvers integrate from 0 to 1.

- :mod:`flows.path`: :class:`LinearPath`, :class:`AffinePath` with :class:`LinearScheduler` /
  :class:`CosineScheduler`; ``sample(x0, x1, t) -> PathSample(x_t, dx_t, t)``,
  ``interpolate(x0, x1, t) -> x_t``.
- :mod:`flows.loss`: :func:`logit_normal_time`, :class:`FlowMatchingLoss` (masked, weighted MSE).
- :mod:`flows.solver`: :class:`ODESolver` (euler, midpoint, heun, rk4) with callbacks,
  :func:`make_time_grid` (SD3 shift), :data:`STOP`, :func:`inpaint_callback` (pins known entries
  to a path).
- :mod:`flows.guidance`: :func:`cfg_velocity`.
- :mod:`flows.structure`: :class:`StructureFlowDiT`, the velocity network of the coarse
  structure latent (column tokens, semantic / image / no condition), and the dense-grid
  conversions :func:`structure_to_grid` / :func:`grid_to_structure`.
- :mod:`flows.texture`: :class:`TextureFlowNet`, the sparse velocity network of the per-voxel
  texture latent (same conditions).

Importing the package imports none of these (nor torch); they load on first use.
"""

_EXPORTS = {
    "AffinePath": "flows.path",
    "LinearPath": "flows.path",
    "PathSample": "flows.path",
    "Scheduler": "flows.path",
    "LinearScheduler": "flows.path",
    "CosineScheduler": "flows.path",
    "Coefficients": "flows.path",
    "expand_time": "flows.path",
    "logit_normal_time": "flows.loss",
    "FlowMatchingLoss": "flows.loss",
    "ODESolver": "flows.solver",
    "STOP": "flows.solver",
    "make_time_grid": "flows.solver",
    "shift_time": "flows.solver",
    "inpaint_callback": "flows.solver",
    "cfg_velocity": "flows.guidance",
    "StructureFlowDiT": "flows.structure",
    "structure_to_grid": "flows.structure",
    "grid_to_structure": "flows.structure",
    "TextureFlowNet": "flows.texture",
    "sample_texture": "flows.texture",
    "sample_structure": "flows.structure",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'flows' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
