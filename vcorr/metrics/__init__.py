"""Scorers that reproduce the field's official numbers: DAVIS J&F, JHMDB PCK, VIP mIoU."""
