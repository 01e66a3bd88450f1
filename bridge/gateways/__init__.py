"""Gateways: transports (HTTP for BOSH, WebSocket and the web client) and protocol gateways."""
