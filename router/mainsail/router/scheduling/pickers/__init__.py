"""Pickers: choose one candidate from the weighted totals (one module each)."""
