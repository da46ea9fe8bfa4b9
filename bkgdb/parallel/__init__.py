"""Running per-run work in parallel: local worker processes or a Dask cluster."""
