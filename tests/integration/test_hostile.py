"""Hostile input on raw sockets: entity expansion, oversize stanzas, connections dropped
mid-stanza.  These tests have a server of their own, so that damage cannot spill into others."""

import asyncio
import socket

import pytest

from .harness import (NS_CLIENT, NS_STREAM_ERRORS, NS_STREAMS, Clients, RawClient, barrier, next_item,
                      parse_stream_document, stream_error_conditions, stream_header)

LIMIT = 65536
USERS = ("peggy@localhost", "rupert@localhost", "trudy@localhost")


@pytest.fixture(scope="module")
def hostile_server(start_server):
    return start_server("hostile", USERS)


def billion_laughs(levels=10):
    """A document whose entity &lol9; expands to 10**9 'lol's, before a valid stream header."""
    entities = ["<!ENTITY lol0 'lol'>"]
    for level in range(1, levels):
        entities.append(f"<!ENTITY lol{level} '" + f"&lol{level - 1};" * 10 + "'>")
    return ("<?xml version='1.0'?><!DOCTYPE stream:stream [" + "".join(entities) + "]>"
            + stream_header("localhost").replace("<?xml version='1.0'?>", "")
            + f"<message to='peggy@localhost'><body>&lol{levels - 1};</body></message>")


def new_log(server, mark):
    return "\n".join(server.lines[mark:])


def assert_still_serving(server):
    """A fresh client logs in and gets an answer to a ping."""

    async def check():
        async with Clients(server) as clients:
            client = await clients.login("peggy@localhost/check", presence=False, roster=False)
            await barrier(client)

    asyncio.run(check())


def test_billion_laughs_gets_restricted_xml(hostile_server):
    """A DOCTYPE with nested entity declarations (billion laughs) is refused with the stream error
    <restricted-xml/>, and the server closes the connection and goes on serving others."""
    mark = len(hostile_server.lines)
    raw = RawClient(hostile_server.port)
    try:
        raw.send(billion_laughs())
        received = raw.read_to_end(timeout=10)
    finally:
        raw.close()
    assert raw.eof, raw.dump()
    assert f"<restricted-xml xmlns='{NS_STREAM_ERRORS}'/>".encode() in received \
        or f'<restricted-xml xmlns="{NS_STREAM_ERRORS}"/>'.encode() in received, raw.dump()
    assert b"lollollol" not in received, raw.dump()
    assert "Traceback" not in new_log(hostile_server, mark)
    assert_still_serving(hostile_server)


def test_stream_error_before_the_header_is_a_well_formed_stream(hostile_server):
    """RFC 6120 section 4.9.1.1: an error triggered before the server sent its stream header
    (here the billion-laughs DOCTYPE) still comes inside an opened <stream:stream>, so the
    server's reply is a well-formed XML stream carrying <restricted-xml/>."""
    raw = RawClient(hostile_server.port)
    try:
        raw.send(billion_laughs())
        received = raw.read_to_end(timeout=10)
    finally:
        raw.close()
    try:
        root = parse_stream_document(received)
    except Exception as error:
        raise AssertionError(f"the server's reply is not a well-formed stream ({error}):\n{raw.dump()}")
    assert root.tag == f"{{{NS_STREAMS}}}stream", raw.dump()
    assert stream_error_conditions(root) == ["restricted-xml"], raw.dump()


def test_oversize_stanza_gets_policy_violation(hostile_server):
    """After login, a stanza larger than stanza_size_limit_bytes (65536) ends the stream with
    <policy-violation/> and the connection is closed; the server goes on serving others."""
    mark = len(hostile_server.lines)
    raw = RawClient(hostile_server.port)
    try:
        jid = raw.login("trudy", hostile_server.password("trudy@localhost"), resource="big")
        stanza = f"<message to='{jid}' type='chat'><body>{'A' * (LIMIT + 4096)}</body></message>"
        assert len(stanza.encode()) > LIMIT
        try:
            raw.send(stanza)
        except OSError:
            pass  # the server may close before it has read everything
        received = raw.read_to_end(timeout=10)
    finally:
        raw.close()
    assert raw.eof, raw.dump()
    text = received.decode("utf-8", "replace")
    assert "policy-violation" in text and NS_STREAM_ERRORS in text, raw.dump()
    assert "<stream:error>" in text or f"<error xmlns='{NS_STREAMS}'" in text, raw.dump()
    assert "AAAAAAAA" not in text, "the oversize message was delivered:\n" + raw.dump()
    assert "Traceback" not in new_log(hostile_server, mark)
    assert_still_serving(hostile_server)


def test_oversize_unfinished_start_tag_gets_policy_violation(hostile_server):
    """The size limit counts from the first byte of a stanza: a start tag that alone grows past
    65536 bytes (an attribute value that never ends) gets <policy-violation/> without waiting for
    the tag to be closed, so a client cannot make the server buffer without bound."""
    raw = RawClient(hostile_server.port)
    try:
        jid = raw.login("trudy", hostile_server.password("trudy@localhost"), resource="opentag")
        try:
            raw.send(f"<message to='{jid}' type='chat' x='{'A' * (LIMIT + 4096)}")
        except OSError:
            pass
        try:
            received = raw.read_to_end(timeout=5)
        except TimeoutError:
            raise AssertionError("no stream error 5 s after an unfinished start tag larger than the "
                                 "limit; the server keeps buffering it") from None
    finally:
        raw.close()
    text = received.decode("utf-8", "replace")
    assert "policy-violation" in text and NS_STREAM_ERRORS in text, raw.dump()


@pytest.mark.parametrize("construct", ["<!-- a comment -->", "<?pi some instruction?>"])
def test_comments_and_processing_instructions_are_restricted(hostile_server, construct):
    """A comment or a processing instruction inside a stanza (RFC 6120 section 11.1) ends the
    stream with <restricted-xml/>."""
    raw = RawClient(hostile_server.port)
    try:
        jid = raw.login("trudy", hostile_server.password("trudy@localhost"), resource="restricted")
        raw.send(f"<message to='{jid}' type='chat'><body>x</body>{construct}</message>")
        received = raw.read_to_end(timeout=10)
    finally:
        raw.close()
    text = received.decode("utf-8", "replace")
    assert "restricted-xml" in text and NS_STREAM_ERRORS in text, raw.dump()
    assert "<body>x</body>" not in text, raw.dump()


def test_stanza_below_the_limit_is_accepted(hostile_server):
    """A 60 kB stanza, under the 64 KiB limit, is routed normally (a message to oneself comes back)."""
    raw = RawClient(hostile_server.port)
    try:
        jid = raw.login("trudy", hostile_server.password("trudy@localhost"), resource="medium")
        body = "B" * 60000
        raw.send(f"<message to='{jid}' type='chat' id='m1'><body>{body}</body></message>")
        message = raw.expect(f"{{{NS_CLIENT}}}message")
        assert message.findtext(f"{{{NS_CLIENT}}}body") == body
        assert message.get("from") == jid
    finally:
        raw.close()


def drop_mid_stanza(port, password):
    """Two hostile connections: one logged in that dies inside a stanza, one that dies inside its
    stream header before logging in.  Both end with a TCP reset."""
    raw = RawClient(port)
    raw.login("trudy", password, resource="hostile")
    raw.send("<message to='peggy@localhost/chat' type='chat'><body>half a mess")
    raw.abort()

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:st")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def test_connection_dropped_mid_stanza_does_not_disturb_others(hostile_server):
    """While peggy and rupert chat, hostile clients drop their connections in the middle of a
    stanza (one after login, one inside its stream header): every message of the chat still
    arrives in order, before, during and after, and the half stanza is never delivered."""
    mark = len(hostile_server.lines)

    async def scenario():
        async with Clients(hostile_server) as clients:
            peggy = await clients.login("peggy@localhost/chat")
            rupert = await clients.login("rupert@localhost/chat")

            peggy.send_message(mto="rupert@localhost/chat", mbody="before", mtype="chat")
            assert (await next_item(rupert.messages, what="message before"))["body"] == "before"

            async def chat():
                for n in range(20):
                    peggy.send_message(mto="rupert@localhost/chat", mbody=f"during {n}", mtype="chat")
                    await asyncio.sleep(0)
                return [(await next_item(rupert.messages, what=f"message {n}"))["body"] for n in range(20)]

            hostile = asyncio.to_thread(drop_mid_stanza, hostile_server.port,
                                        hostile_server.password("trudy@localhost"))
            bodies, _ = await asyncio.gather(chat(), hostile)
            assert bodies == [f"during {n}" for n in range(20)]

            rupert.send_message(mto="peggy@localhost/chat", mbody="after", mtype="chat")
            reply = await next_item(peggy.messages, what="message after")
            # The first message peggy receives is rupert's: the hostile half message never came.
            assert reply["body"] == "after"
            assert reply["from"] == "rupert@localhost/chat"

    asyncio.run(scenario())
    assert "Traceback" not in new_log(hostile_server, mark)
    assert_still_serving(hostile_server)
