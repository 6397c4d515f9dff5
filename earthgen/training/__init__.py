"""Training loops (accelerate): see :mod:`earthgen.training.image`."""
