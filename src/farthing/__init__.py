"""farthing: micropayments for information goods over HTTP 402."""

__version__ = "0.1.0"
