"""XML streams: client (c2s), server (s2s) and component (XEP-0114) streams."""
