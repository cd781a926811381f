"""vcorr: self-supervised video correspondence, reproduced end to end."""

__version__ = "0.1.0"
