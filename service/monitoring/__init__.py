"""Prometheus metrics, reward drift and the golden-set canary."""
