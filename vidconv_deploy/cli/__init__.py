"""Command-line entry points (one module per console script)."""
