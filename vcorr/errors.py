"""The one exception type the CLI turns into a clear message and a non-zero exit."""


class VcorrError(Exception):
    """Bad input or a failed step, with a message that names the file and what is wrong."""
