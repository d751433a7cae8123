"""The package version: the one source (pyproject reads it via `[tool.setuptools.dynamic]`)."""

__version__ = "0.1.0"
