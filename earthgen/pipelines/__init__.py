"""Generation pipelines (diffusers conventions). Import the one you need:

>>> from earthgen.pipelines.image import EarthImagePipeline
"""
