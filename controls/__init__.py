"""Control branches that steer the image generator with dense maps (layouts, roads, edges,
height): :class:`~controls.fused.FusedControlNet` fuses any set of conditions at several scales
into one ControlNet-style branch."""

from controls.fused import FusedControlNet, MultiScaleFusion

__all__ = ["FusedControlNet", "MultiScaleFusion"]
