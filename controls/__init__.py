"""Multi-condition control branch for latent diffusion (CRS-Diff-style fused dense controls).
Built in the imagery release."""
