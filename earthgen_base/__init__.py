"""The bottom layer of EarthGen's packages: error types and small I/O helpers that ``renderers``,
``vae``, ``flows``, ``controls``, ``earthgen`` and ``apps`` all import. It imports none of them
(``pyproject.toml``'s import-linter contracts check it) and nothing heavy: standard library only.
"""
