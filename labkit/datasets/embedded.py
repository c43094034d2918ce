"""Embedded, procedural data sets (placeholder: being written)."""
__all__: list[str] = []
