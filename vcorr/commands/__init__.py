"""Sub-commands of the `vcorr` CLI, one module each (see `vcorr.cli`)."""
