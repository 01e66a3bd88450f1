"""twistd plugin: makes ``twistd bridge-mux`` build the multiplexor of bridge.mux.tap (docs/scaling.md)."""

from twisted.application.service import ServiceMaker

bridge_mux = ServiceMaker(
    "bridge-mux",
    "bridge.mux.tap",
    "Connection multiplexor in front of bridge nodes",
    "bridge-mux",
)
