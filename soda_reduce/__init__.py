"""soda-reduce: on-demand reduction of archival telescope data through IVOA standards."""

__version__ = "0.1.0"
