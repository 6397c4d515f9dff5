"""Training: one loss object per task (``image``, ``latent``, ``vae3d``, ``flow3d``) and one
loop, :func:`earthgen.training.loop.fit`; ``build`` makes and packages models."""
