"""Scorers: how good each candidate is, in [0, 1] (one module each, formula in its docstring)."""
