"""Evol-Instruct evolution and elimination with a local model (see evolve_local/evolve.py)."""
