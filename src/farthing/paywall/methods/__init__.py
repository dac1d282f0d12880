"""One adapter per payment method, each a thin shell around a pure scheme module."""
