"""In-band registration (XEP-0077) per host, and virtual hosts with aliases."""

import asyncio

from .harness import NS_CLIENT, NS_STANZAS, Client, Clients, RawClient, next_item

NS_REGISTER = "jabber:iq:register"
NS_REGISTER_FEATURE = "http://jabber.org/features/iq-register"


def register(raw, username, password, iq_id="reg2"):
    raw.send(f"<iq type='set' id='{iq_id}'><query xmlns='{NS_REGISTER}'><username>{username}</username>"
             f"<password>{password}</password></query></iq>")
    reply = raw.expect(f"{{{NS_CLIENT}}}iq")
    assert reply.get("id") == iq_id, raw.dump()
    return reply


def condition_of(reply):
    error = reply.find(f"{{{NS_CLIENT}}}error")
    if error is None:
        return None
    for item in error:
        if item.tag.startswith(f"{{{NS_STANZAS}}}") and not item.tag.endswith("}text"):
            return item.tag.split("}", 1)[1]
    return ""


async def refused(jid, password, port):
    """True when the server refuses these credentials."""
    client = Client(jid, password)
    client.start(port)
    try:
        done, _ = await asyncio.wait([client.started, client.auth_failed], timeout=10,
                                     return_when=asyncio.FIRST_COMPLETED)
        assert done, f"no outcome of the login of {jid}"
        return client.auth_failed.done() and not client.started.done()
    finally:
        await client.close()


def test_in_band_registration_on_localhost(server):
    """On localhost (registration = true), after STARTTLS, the register feature is announced, the
    form asks for username and password, a set creates the account (a second time: conflict),
    and the new account logs in."""
    raw = RawClient(server.port)
    try:
        features = raw.secure("localhost")
        assert features.find(f"{{{NS_REGISTER_FEATURE}}}register") is not None, raw.dump()
        raw.send(f"<iq type='get' id='reg1'><query xmlns='{NS_REGISTER}'/></iq>")
        form = raw.expect(f"{{{NS_CLIENT}}}iq")
        assert form.get("type") == "result" and form.get("id") == "reg1", raw.dump()
        query = form.find(f"{{{NS_REGISTER}}}query")
        assert query.find(f"{{{NS_REGISTER}}}username") is not None, raw.dump()
        assert query.find(f"{{{NS_REGISTER}}}password") is not None, raw.dump()

        reply = register(raw, "newcomer", "fresh-password")
        assert reply.get("type") == "result", raw.dump()
        reply = register(raw, "newcomer", "other-password", iq_id="reg3")
        assert reply.get("type") == "error" and condition_of(reply) == "conflict", raw.dump()
    finally:
        raw.close()

    async def scenario():
        async with Clients(server) as clients:
            client = await clients.login("newcomer@localhost/first", password="fresh-password")
            assert client.boundjid.bare == "newcomer@localhost"
        assert await refused("newcomer@localhost/second", "other-password", server.port)

    asyncio.run(scenario())


def test_registration_refused_on_example_test(server):
    """On example.test (registration off) no register feature is announced, a registration
    attempt gets an error, and no account is created."""
    raw = RawClient(server.port, server_hostname="example.test")
    try:
        features = raw.secure("example.test")
        assert features.find(f"{{{NS_REGISTER_FEATURE}}}register") is None, raw.dump()
        reply = register(raw, "intruder", "let-me-in")
        assert reply.get("type") == "error", raw.dump()
        assert condition_of(reply) in ("service-unavailable", "not-allowed", "forbidden"), raw.dump()
    finally:
        raw.close()
    assert asyncio.run(refused("intruder@example.test/x", "let-me-in", server.port))


def test_registration_needs_tls(server):
    """Before STARTTLS, even on localhost, a registration attempt is refused."""
    raw = RawClient(server.port)
    try:
        raw.open("localhost")
        reply = register(raw, "plaintext-user", "sniffed")
        assert reply.get("type") == "error", raw.dump()
    finally:
        raw.close()
    assert asyncio.run(refused("plaintext-user@localhost/x", "sniffed", server.port))


def test_alias_login_binds_on_the_real_host(server):
    """A user of example.test connecting with the domain alias.test (stream to='alias.test') logs
    in with the example.test password and is bound on example.test; messages to the alias reach
    that session."""

    async def scenario():
        async with Clients(server) as clients:
            olivia = await clients.login("olivia@alias.test/trip",
                                         password=server.password("olivia@example.test"))
            assert olivia.boundjid.full == "olivia@example.test/trip"
            sender = await clients.login("olivia@localhost/home")
            sender.send_message(mto="olivia@alias.test/trip", mbody="via the alias", mtype="chat")
            message = await next_item(olivia.messages, what="message sent to the alias")
            assert message["body"] == "via the alias"
            assert message["from"] == "olivia@localhost/home"
            assert message["to"].domain == "example.test"

    asyncio.run(scenario())


def test_hosts_have_separate_accounts(server):
    """olivia@localhost and olivia@example.test are different accounts: each password opens
    only its own, and each is bound on its own host."""

    async def scenario():
        local_password = server.password("olivia@localhost")
        test_password = server.password("olivia@example.test")
        async with Clients(server) as clients:
            local = await clients.login("olivia@localhost/a", password=local_password, presence=False)
            assert local.boundjid.bare == "olivia@localhost"
            remote = await clients.login("olivia@example.test/b", password=test_password, presence=False)
            assert remote.boundjid.bare == "olivia@example.test"
        assert await refused("olivia@localhost/c", test_password, server.port)
        assert await refused("olivia@example.test/d", local_password, server.port)
        assert await refused("alice@example.test/e", server.password("alice@localhost"), server.port)

    asyncio.run(scenario())
