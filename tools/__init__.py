"""Tools for working on airm itself (not installed with the package)."""
