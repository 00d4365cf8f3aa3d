"""TOYCAM, an imaginary camera, reduced by soda-reduce: the example of docs/plugins.md."""
