"""The HTTP edge shared by vendor, issuer and wallet: the Payment scheme and problem details.

Pure code (no sockets): header values and errors in, header values and JSON out.
"""
