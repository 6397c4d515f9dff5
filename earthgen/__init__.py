"""EarthGen: generative Earth imagery and 3D terrain.

Importing the package is cheap: it loads no model, builds nothing and prints nothing.
Heavy submodules (torch models, geo readers) are imported where they are used.
"""

__version__ = "0.1.0"

from earthgen.errors import EarthGenError, UserInputError  # noqa: E402

__all__ = ["EarthGenError", "UserInputError", "__version__"]
