"""Feature modules: each implements one protocol and registers its handlers with the core."""
