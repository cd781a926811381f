"""Datasets and released weights: registry access, download, extraction, layouts and indexes."""
