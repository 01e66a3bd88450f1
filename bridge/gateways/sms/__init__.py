"""The SMS gateway: SMPP v3.4 (as an ESME) to one or more SMSCs (docs/sms.md).

``text`` encodes and splits (pure functions), ``pdu`` frames and codes PDUs
with smpplib's codec, ``esme`` is the Twisted protocol and the link that
keeps it bound, ``queue`` the persisted outbound queue, ``fragments`` the
concatenated MO parts waiting for the rest, and ``gateway`` ties
them to the server: the ``offline/stored`` hook and the route of the SMS
domain.
"""
