"""polybroker: a multi-protocol IoT message broker."""

__version__ = "0.1.0"

__all__ = ["__version__"]
