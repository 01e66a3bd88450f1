"""twistd plugin: makes ``twistd bridge`` build the service tree of bridge.tap."""

from twisted.application.service import ServiceMaker

bridge = ServiceMaker(
    "bridge",
    "bridge.tap",
    "Instant-messaging server and multi-protocol gateway",
    "bridge",
)
