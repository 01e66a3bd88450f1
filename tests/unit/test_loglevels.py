"""Log levels per subsystem (bridge/core/loglevels.py): bridge's loggers filtered by namespace."""

from types import SimpleNamespace

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core.loglevels import LevelFilter


def log_config(**section):
    return configuration.parse({"log": section}, "test.toml")


class LevelFilterTests(SynchronousTestCase):
    def setUp(self):
        self.events = []
        publisher = self.events.append
        self.loggers = {name: Logger(namespace=name, observer=publisher)
                        for name in ("bridge.gateways.sip.registrar", "bridge.core.streams.s2s",
                                     "bridge.features.mam")}
        self.modules = {name: SimpleNamespace(log=logger) for name, logger in self.loggers.items()}
        self.modules["twisted.internet.base"] = SimpleNamespace(log=Logger(namespace="twisted", observer=publisher))
        self.filter = LevelFilter(log_config(levels={"sip": "debug", "s2s": "warn"}).log, publisher)
        self.filter.install(self.modules)

    def said(self):
        said, self.events[:] = [event["log_namespace"] + " " + event["log_format"] for event in self.events], []
        return said

    def test_levels_per_subsystem(self):
        """sip at debug lets its debug lines through; s2s at warn drops its info lines; the others
        keep the default level (info); Twisted's own loggers are not touched."""
        self.loggers["bridge.gateways.sip.registrar"].debug("sip detail")
        self.loggers["bridge.core.streams.s2s"].info("s2s info")
        self.loggers["bridge.core.streams.s2s"].warn("s2s warning")
        self.loggers["bridge.features.mam"].debug("mam detail")
        self.loggers["bridge.features.mam"].info("mam info")
        self.modules["twisted.internet.base"].log.debug("twisted detail")
        self.assertEqual(self.said(), ["bridge.gateways.sip.registrar sip detail",
                                       "bridge.core.streams.s2s s2s warning", "bridge.features.mam mam info",
                                       "twisted twisted detail"])

    def test_reload_sets_new_levels(self):
        """A reload step puts the new levels in force only when its function is called."""
        commit = self.filter.prepare_reload(log_config(level="warn", levels={"features": "debug"}))
        self.loggers["bridge.features.mam"].debug("before")
        commit()
        self.loggers["bridge.features.mam"].debug("after")
        self.loggers["bridge.gateways.sip.registrar"].info("sip info")
        self.assertEqual(self.said(), ["bridge.features.mam after"])

    def test_unknown_subsystem_or_level(self):
        """An unknown subsystem or level is a configuration error naming the key."""
        with self.assertRaises(configuration.ConfigError) as caught:
            log_config(levels={"xmpp": "debug", "sip": "loud"})
        self.assertIn("log.levels.xmpp: not a subsystem", str(caught.exception))
        self.assertIn("log.levels.sip: must be one of", str(caught.exception))
        self.assertRaises(configuration.ConfigError, log_config, level="verbose")
