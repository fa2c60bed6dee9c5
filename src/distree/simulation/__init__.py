"""The edge-cluster simulator: recorded model outputs replayed on a SimPy cluster."""
