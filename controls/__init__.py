"""Control branches that steer the image generator with dense maps (layouts, roads, edges,
height): :class:`~controls.fused.FusedControlNet` fuses any set of conditions at several scales
into one ControlNet-style branch; :func:`~controls.inputs.widen_input` lets a UNet take a map
concatenated to its latent instead."""

from controls.fused import FusedControlNet, MultiScaleFusion
from controls.inputs import widen_input

__all__ = ["FusedControlNet", "MultiScaleFusion", "widen_input"]
