"""Flow-matching generators (path, loss, solver) for 3D structure and texture. Built in the 3D
generation release."""
