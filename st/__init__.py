"""st: topic modeling supervised by language-model soft labels."""

__version__ = "0.1.0"
