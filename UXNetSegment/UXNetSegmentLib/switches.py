"""Default-on switches read from environment variables (``UXNET_COMPILE``, ``UXNET_WINOGRAD``, ...)."""
import os

OFF_WORDS = ("0", "false", "no", "off")


def switched_on(name: str) -> bool:
    """Off when the environment variable ``name`` is 0/false/no/off (any case); on when unset or anything else."""
    return os.environ.get(name, "1").strip().lower() not in OFF_WORDS
