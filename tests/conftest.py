"""Loaded by pytest before any test module, for the unit and the integration tests alike."""

import importlib.util

# slixmpp-omemo builds its XML schemas (xmlschema) when imported, and that fails with
# AttributeError: __provides__ once twisted.internet.testing has been imported (after which
# collections.abc.Iterable and typing.Generic carry a zope.interface declaration that
# xmlschema's walk over its classes' attributes trips on).  Imported here, before any test
# module, it is not.
if importlib.util.find_spec("slixmpp_omemo") is not None:
    import slixmpp_omemo  # noqa: F401
