"""Logging in: SCRAM over STARTTLS, refused credentials, direct TLS (XEP-0368)."""

import asyncio

import pytest

from .harness import NS_SASL, NS_TLS, Client, Clients, RawClient

MECHANISMS_ALLOWED = ("SCRAM-SHA-256", "SCRAM-SHA-1")


def test_scram_login_over_starttls(server):
    """On the c2s port a client upgrades with STARTTLS, authenticates with SCRAM (SHA-256 or
    SHA-1) and gets the resource it asked for."""

    async def scenario():
        async with Clients(server) as clients:
            client = await clients.login("alice@localhost/scram", presence=False, roster=False)
            assert client.mechanism in MECHANISMS_ALLOWED
            assert "starttls" in client.features
            assert client.transport.get_extra_info("ssl_object") is not None
            assert client.transport.get_extra_info("peername")[1] == server.port
            assert client.boundjid.full == "alice@localhost/scram"

    asyncio.run(scenario())


@pytest.mark.parametrize("mechanism", MECHANISMS_ALLOWED)
def test_scram_mechanism_login(server, mechanism):
    """A client limited to one SCRAM mechanism logs in with it over STARTTLS."""

    async def scenario():
        async with Clients(server) as clients:
            client = await clients.login(f"alice@localhost/{mechanism}", mechanisms=[mechanism], presence=False,
                                         roster=False)
            assert client.mechanism == mechanism
            assert client.boundjid.full == f"alice@localhost/{mechanism}"

    asyncio.run(scenario())


def test_sasl_needs_tls_first(server):
    """Before STARTTLS the server requires TLS and offers no SASL mechanism; after it, SCRAM and PLAIN."""
    raw = RawClient(server.port)
    try:
        features = raw.open("localhost")
        assert features.find(f"{{{NS_TLS}}}starttls/{{{NS_TLS}}}required") is not None, raw.dump()
        assert features.find(f"{{{NS_SASL}}}mechanisms") is None, raw.dump()
        raw.starttls()
        features = raw.open("localhost")
        offered = {m.text for m in features.iter(f"{{{NS_SASL}}}mechanism")}
        assert {"SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"} <= offered, raw.dump()
    finally:
        raw.close()


def test_wrong_password_refused(server):
    """A wrong password, and an account that does not exist, fail SASL with <not-authorized/>
    and never get a session."""

    async def attempt(jid, password):
        client = Client(jid, password, mechanisms=["SCRAM-SHA-256"])
        client.start(server.port)
        try:
            failure = await asyncio.wait_for(client.auth_failed, 10)
            assert failure["condition"] == "not-authorized"
            assert not client.started.done()
        finally:
            await client.close()

    async def scenario():
        await attempt("alice@localhost/wrong", "not-" + server.password("alice@localhost"))
        await attempt("nobody@localhost/wrong", "whatever")

    asyncio.run(scenario())


def test_direct_tls_login(server):
    """On the direct-TLS port (XEP-0368) TLS starts with the first byte: the client logs in with
    no STARTTLS step, and exchanges stanzas over that connection."""

    async def scenario():
        async with Clients(server) as clients:
            client = await clients.login("alice@localhost/direct", direct_tls=True, presence=False)
            assert client.transport.get_extra_info("peername")[1] == server.tls_port
            assert client.transport.get_extra_info("ssl_object") is not None
            assert "starttls" not in client.features
            assert client.mechanism in MECHANISMS_ALLOWED
            assert client.boundjid.full == "alice@localhost/direct"
            reply = await client.query("get", "localhost", "<ping xmlns='urn:xmpp:ping'/>")
            assert reply["type"] == "result"

    asyncio.run(scenario())


def test_direct_tls_raw_stream_offers_no_starttls(server):
    """A raw client that starts TLS at once on the direct-TLS port gets features with SASL
    (PLAIN included, the channel being encrypted) and no STARTTLS, and logs in."""
    raw = RawClient(server.tls_port, direct_tls=True)
    try:
        features = raw.open("localhost")
        assert features.find(f"{{{NS_TLS}}}starttls") is None, raw.dump()
        offered = {m.text for m in features.iter(f"{{{NS_SASL}}}mechanism")}
        assert "PLAIN" in offered and "SCRAM-SHA-256" in offered, raw.dump()
        jid = raw.login("alice", server.password("alice@localhost"), resource="rawtls", features=features)
        assert jid == "alice@localhost/rawtls"
    finally:
        raw.close()
