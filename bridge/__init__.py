"""bridge: an instant-messaging server and multi-protocol gateway on Twisted."""

__version__ = "0.1.0"
