"""farthing's payment methods for pympp (``pip install farthing[mpp]``; import name ``mpp``).

:mod:`farthing.mpp.client` makes them pympp client methods that pay from a farthing wallet
(pympp's own httpx transport does the HTTP); :mod:`farthing.mpp.server` makes them pympp
server methods that verify through farthing's core and store. See docs/mpp.md.
"""
