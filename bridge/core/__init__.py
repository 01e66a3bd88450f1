"""The core of bridge: streams, the routing table, sessions, hooks and storage."""
