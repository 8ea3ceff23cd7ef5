"""Filters: which workers may serve a request at all (one module each)."""
