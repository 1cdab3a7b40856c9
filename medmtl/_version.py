"""The package version, in a leaf module: library code reads it here, not through the package's face."""

__version__ = "0.1.0"
