"""Output a client does not read, over a real socket: bridge stops serving it, and cuts it off
once more than max_buffered_bytes pile up, with its memory bounded.  The server is one of its own."""

import pytest

from .conftest import accounts_for
from .harness import NS_CLIENT, RawClient, ServerProcess, add_users, write_config

MAX_BUFFERED_BYTES = 65536
PHOTO_BYTES = 50000
REQUESTS = 1000
# Far more than the kernel's buffers, Twisted's and max_buffered_bytes hold together.
MAX_MESSAGES = 2000
USERS = ("alice@localhost", "bob@localhost")


@pytest.fixture(scope="module")
def backpressure_server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("backpressure")
    config_path = write_config(str(directory), c2s_options=(
        f"max_buffered_bytes = {MAX_BUFFERED_BYTES}\n"
        "rate_limit_bytes_per_second = 100000000\nrate_limit_burst_bytes = 100000000"))
    accounts = accounts_for(USERS)
    add_users(config_path, accounts)
    process = ServerProcess(config_path, accounts).start()
    yield process
    process.stop()


def rss_kib(pid):
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/PID/status")


def test_client_that_never_reads_is_cut_off_with_bounded_memory(backpressure_server):
    """alice sets a 50 kB vCard, asks for it a thousand times in one write (50 MB of answers) and never
    reads; bob then sends her 2 kB messages.  bridge answers her only up to its send buffer, and
    cuts her off with <policy-violation/> once max_buffered_bytes more are waiting: an IQ bob sends to
    her full JID then bounces, well before bob has sent MAX_MESSAGES, and the server's memory grows
    by far less than the 50 MB she asked for.  bob's own stream is not disturbed."""
    server = backpressure_server
    alice = RawClient(server.port)
    bob = RawClient(server.port)
    try:
        alice_jid = alice.login("alice", server.password("alice@localhost"), resource="reader")
        alice.send(f"<iq type='set' id='v'><vCard xmlns='vcard-temp'><PHOTO><BINVAL>{'A' * PHOTO_BYTES}"
                   "</BINVAL></PHOTO></vCard></iq>")
        assert alice.expect(f"{{{NS_CLIENT}}}iq").get("type") == "result", alice.dump()
        bob.login("bob", server.password("bob@localhost"), resource="writer")
        before = rss_kib(server.process.pid)
        port = alice.sock.getsockname()[1]
        alice.send("".join(f"<iq type='get' id='g{n}' to='alice@localhost'><vCard xmlns='vcard-temp'/></iq>"
                           for n in range(REQUESTS)))
        cut_off = None
        for number in range(MAX_MESSAGES):
            bob.send(f"<message to='{alice_jid}' type='chat'><body>{'x' * 2000}</body></message>"
                     f"<iq type='get' to='{alice_jid}' id='probe{number}'><probe xmlns='urn:example:probe'/></iq>"
                     f"<iq type='get' to='localhost' id='sync{number}'><ping xmlns='urn:xmpp:ping'/></iq>")
            while True:
                answer = bob.expect(f"{{{NS_CLIENT}}}iq")
                if answer.get("id", "").startswith("probe"):
                    assert answer.get("type") == "error", bob.dump()
                    cut_off = number
                if answer.get("id") == f"sync{number}":
                    break
            if cut_off is not None:
                break
        assert cut_off is not None, f"alice was not cut off after {MAX_MESSAGES} messages of 2 kB"
        server.wait_for_line(lambda text: f"cutting off 127.0.0.1:{port}" in text, timeout=10,
                             what="the cut-off of alice")
        server.wait_for_line(lambda text: f"stream error policy-violation for 127.0.0.1:{port}" in text,
                             timeout=10, what="alice's stream error")
        grown = rss_kib(server.process.pid) - before
        print(f"alice cut off after {cut_off + 1} messages from bob; the server grew by {grown} KiB")
        assert grown < 20 * 1024, f"the server grew by {grown} KiB"
        bob.send("<iq type='get' to='localhost' id='after'><ping xmlns='urn:xmpp:ping'/></iq>")
        assert bob.expect(f"{{{NS_CLIENT}}}iq").get("type") == "result", bob.dump()
    finally:
        alice.close()
        bob.close()
