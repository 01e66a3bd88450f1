"""The benchmarks: bridge against Prosody and ejabberd (``python -m bench``), and the SIP and SMS gateways' own scripts.

See bench/README.md.
"""
