"""Log levels per subsystem (``[log]``, docs/operations.md "Log levels").

Every module of bridge logs through a module-level ``Logger()``, whose
namespace is the module's name.  ``LevelFilter`` points those loggers at
one twisted.logger ``FilteringLogObserver`` in front of the global
publisher, whose ``LogLevelFilterPredicate`` holds a level per namespace:
the ``[log] level`` for ``bridge`` and the ``[log] levels`` of each
subsystem, a subsystem being a few namespaces (``SUBSYSTEMS``) or a
dotted ``bridge.`` namespace of its own.  The loggers of Twisted itself
are left alone.  A reload sets the levels again.
"""

import sys

from twisted.logger import FilteringLogObserver, Logger, LogLevel, LogLevelFilterPredicate, globalLogPublisher

LEVELS = ("debug", "info", "warn", "error", "critical")
SUBSYSTEMS = {
    "c2s": ("bridge.core.streams.c2s", "bridge.core.sasl"),
    "s2s": ("bridge.core.streams.s2s", "bridge.core.srv"),
    "components": ("bridge.core.streams.component",),
    "http": ("bridge.gateways.http", "bridge.gateways.bosh", "bridge.gateways.websocket",
             "bridge.gateways.webclient", "bridge.gateways.upload"),
    "sip": ("bridge.gateways.sip",),
    "sms": ("bridge.gateways.sms",),
    "email": ("bridge.gateways.smtp",),
    "muc": ("bridge.gateways.muc",),
    "pubsub": ("bridge.gateways.pubsub", "bridge.core.pubsub"),
    "api": ("bridge.gateways.api",),
    "ldap": ("bridge.core.ldap", "bridge.core.directory"),
    "cluster": ("bridge.core.cluster", "bridge.core.redislink"),
    "storage": ("bridge.core.storage",),
    "features": ("bridge.features",),
}


def namespaces_of(name):
    """The namespaces a ``[log] levels`` key names, or None when it names none."""
    if name in SUBSYSTEMS:
        return SUBSYSTEMS[name]
    if name.startswith("bridge.") and all(part.isidentifier() for part in name.split(".")):
        return (name,)
    return None


def predicate_for(config):
    """A ``LogLevelFilterPredicate`` with the levels of a ``[log]`` section."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(config.level))
    for name, level in config.levels.items():
        for namespace in namespaces_of(name):
            predicate.setLogLevelForNamespace(namespace, LogLevel.levelWithName(level))
    return predicate


class LevelFilter:
    """The filter between bridge's loggers and ``publisher`` (the global one in the server)."""

    def __init__(self, config, publisher=globalLogPublisher):
        self.publisher = publisher
        self.predicate = predicate_for(config)
        self.observer = FilteringLogObserver(publisher, [lambda event: self.predicate(event)])

    def install(self, modules=None):
        """Point the module-level loggers of every ``bridge`` module imported by now at the filter."""
        modules = sys.modules if modules is None else modules
        for name, module in list(modules.items()):
            if name == "bridge" or name.startswith("bridge."):
                logger = getattr(module, "log", None)
                if isinstance(logger, Logger) and logger.observer is self.publisher:
                    logger.observer = self.observer

    def prepare_reload(self, config):
        """A reload step (bridge.core.reload): the new levels, put in force by the function returned."""
        predicate = predicate_for(config.log)
        return lambda: setattr(self, "predicate", predicate)
