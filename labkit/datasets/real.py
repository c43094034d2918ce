"""Real data sets under the data root (placeholder: being written)."""
__all__: list[str] = []
