"""The multiplexor (``twistd bridge-mux``, docs/scaling.md): holds clients' sockets and TLS, forwards to nodes."""
