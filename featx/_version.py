"""The version of featx (also in pyproject.toml; a test proves they are equal)."""

__version__ = "0.1.0"
