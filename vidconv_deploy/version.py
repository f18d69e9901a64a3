"""The package version, in the one place pyproject.toml, manifests and quant_info.json read it from."""

__version__ = "0.1.0"
