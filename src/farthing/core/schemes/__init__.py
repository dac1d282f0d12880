"""The payment schemes, one pure module each (no I/O; clock and randomness passed in).

Every module opens with a "Theory of operation" that cites its paper and says what is
the paper's and what is our reconstruction.
"""
