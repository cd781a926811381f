"""Evaluation: method configurations and the propagation pipeline over a benchmark."""
