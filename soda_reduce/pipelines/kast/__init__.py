"""Shane/Kast long-slit spectroscopy, reduced by PypeIt (docs/pipelines/kast.md)."""
