"""Detection data augmentation with box-conditioned generation (AeroGen ideas): sample new box
layouts from a dataset, generate images for them, keep those a detector trained on the real data
confirms, export real + synthetic in the input format with a manifest."""

from earthgen.augment.core import AugmentConfig, augment_dataset, read_manifest, write_copies
from earthgen.augment.filter import FilterResult, filter_generated, match_requested
from earthgen.augment.layouts import Layout, LayoutConfig, class_weights, sample_layouts

__all__ = [
    "AugmentConfig",
    "FilterResult",
    "Layout",
    "LayoutConfig",
    "augment_dataset",
    "class_weights",
    "filter_generated",
    "match_requested",
    "read_manifest",
    "sample_layouts",
    "write_copies",
]
