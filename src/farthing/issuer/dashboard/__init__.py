"""The operator dashboard (see :mod:`.app`)."""
