"""The pure core of farthing: encodings, primitives and the payment schemes.

Nothing under ``farthing.core`` performs I/O: no sockets, no files, no database, no
asyncio. Time and randomness come in as parameters. Services, storage and the wallet are
adapters around it (a test enforces the import boundary).
"""
