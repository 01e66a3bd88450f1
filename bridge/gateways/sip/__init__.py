"""The SIP/SIMPLE gateway (RFC 3261 and friends), written on Twisted.

The foundation is sans-IO and has no clock of its own:

* ``message``: the message model, the parser (one message per datagram, or
  a Content-Length framer for TCP and TLS streams) and the serializer, with
  the URI, name-addr, Via and CSeq grammar and typed parse errors that say
  which status to answer;
* ``transaction``: the client and server transactions of RFC 3261 section
  17, with their timers on a clock passed in, behind a ``send(message,
  address)`` transport interface;
* ``digest``: server-side digest authentication (RFC 7616, RFC 2617) with
  stateless, HMAC-authenticated nonces.

See docs/decisions.md ("The SIP parser") for why this is not built on
``twisted.protocols.sip``.
"""
