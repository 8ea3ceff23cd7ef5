"""Mainsail workers: the inference engine, its model implementations and the tiny checkpoints."""
