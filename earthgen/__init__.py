"""EarthGen: generative Earth imagery and 3D terrain.

Importing the package is cheap: it loads no model, builds nothing and prints nothing.
Heavy submodules (torch models, geo readers) are imported where they are used.
"""

__version__ = "0.1.0"

from earthgen.errors import EarthGenError, UserInputError  # noqa: E402

__all__ = ["EarthGenError", "UserInputError", "__version__"]


def __getattr__(name: str):
    # Lazy exports: diffusers saves a component as (top-level package, class name), so classes
    # stored in pipeline folders are reachable as earthgen.<Class> without importing torch here.
    if name == "MetadataEncoder":
        from earthgen.conditioning.metadata import MetadataEncoder

        return MetadataEncoder
    if name == "EarthImagePipeline":
        from earthgen.pipelines.image import EarthImagePipeline

        return EarthImagePipeline
    raise AttributeError(f"module 'earthgen' has no attribute {name!r}")
