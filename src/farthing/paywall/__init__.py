"""The vendor paywall: HTTP 402 with the "Payment" scheme, for any ASGI app."""
