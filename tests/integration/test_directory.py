"""A host whose users live in OpenLDAP: directory passwords, SCRAM after the first PLAIN login,
filter injection, and two slapd servers of which one, then both, stop (docs/directory.md)."""

import asyncio
import base64
import ipaddress
import os
import shutil
import socket
import subprocess

import pytest

from tests.pki import CertificateAuthority

from . import slapd
from .harness import NS_SASL, RawClient, login, next_item, scram_login

from .test_sms import NODE, SMSC, SMSC_DIR

SMSC_MISSING = NODE is None or not os.path.isdir(os.path.join(SMSC_DIR, "node_modules", "smpp"))

pytestmark = pytest.mark.skipif(slapd.missing() is not None, reason=f"no slapd: {slapd.missing()}")

HOST = "corp.test"
SIPP = shutil.which("sipp")
SIP_SECTION = """
[sip]
enabled = true
udp_endpoints = ["udp:0:interface=127.0.0.1"]
tcp_endpoints = ["tcp:0:interface=127.0.0.1"]
tls_endpoints = ["tcp:0:interface=127.0.0.1"]
advertised_address = "127.0.0.1"
"""
NS_DATA = "jabber:x:data"
SEARCH = ("<query xmlns='jabber:iq:search'><x xmlns='jabber:x:data' type='submit'>"
          "<field var='FORM_TYPE'><value>jabber:iq:search</value></field>"
          "<field var='{field}'><value>{value}</value></field></x></query>")
USERS = {"alice": ("Alice Liddell", "alice-ldap-pw", "+491701234567"),
         "bob": ("Bob Builder", "bob-ldap-pw", "+491707654321")}


def start_directory(tmp_path, start_server, trusted_ca=None, host_options="", tables=""):
    """Two slapd with the same entries (the first preferred) with certificates of a test authority,
    and a server whose host corp.test uses them, trusting ``trusted_ca`` (default: that authority).
    ``host_options``: more lines for [hosts."corp.test"]; ``tables``: more tables."""
    authority = CertificateAuthority(tmp_path)
    certificate, key = authority.issue(tmp_path, [ipaddress.ip_address("127.0.0.1")], file_name="slapd")
    servers = []
    for name in ("first", "second"):
        server = slapd.Slapd(tmp_path / name, slapd.users_ldif(USERS), certificate, key, authority.ca_file)
        servers.append(server)
        server.start()
    password_file = tmp_path / "bind.password"
    password_file.write_text(slapd.SERVICE_PASSWORD + "\n")
    os.chmod(password_file, 0o600)
    uris = ", ".join(f'"{server.uri}"' for server in servers)
    tables = (f'[hosts."{HOST}"]\nldap = "corp"\n{host_options}[ldap.corp]\nuris = [{uris}]\n'
              f'ca_file = "{trusted_ca or authority.ca_file}"\n'
              f'bind_dn = "{slapd.SERVICE_DN}"\nbind_password_file = "{password_file}"\n'
              f'base_dn = "ou=people,{slapd.SUFFIX}"\ngroup_base_dn = "{slapd.SUFFIX}"\ntimeout_seconds = 5\n'
              + tables)
    bridge = start_server("directory", [], sip=SIP_SECTION, tables=tables,
                          wait_for=("c2s", "c2s-direct-tls", "sip-udp"))
    return bridge, servers


def stop_directory(bridge, servers):
    bridge.stop()
    for server in servers:
        server.remove()


@pytest.fixture
def directory(tmp_path, start_server):
    """``start_directory``: the server and its two slapd, all stopped at the end."""
    bridge, servers = start_directory(tmp_path, start_server)
    yield bridge, servers
    stop_directory(bridge, servers)


def plain(bridge, user, password):
    """A PLAIN login on a new connection over STARTTLS; the client and the name of the outcome."""
    raw = RawClient(bridge.port, server_hostname=HOST)
    raw.secure(HOST)
    outcome = raw.authenticate_plain(user, password)
    return raw, outcome.tag.split("}")[1] if outcome.tag.endswith("success") else outcome[0].tag.split("}")[1]


def test_directory_password_then_scram(directory):
    """A slixmpp client logs in with its directory password (PLAIN over TLS); from then on SCRAM works
    with the records kept at that login; it finds bob by name (XEP-0055) and reads his vCard with the
    photo from the directory; a wrong password is not-authorized."""
    bridge, _ = directory

    async def scenario():
        client = await login(f"alice@{HOST}/plain", USERS["alice"][1], bridge.port, mechanisms=["PLAIN"],
                             presence=False, roster=False)
        assert client.mechanism == "PLAIN"
        await client.close()
        client = await login(f"alice@{HOST}/scram", USERS["alice"][1], bridge.port,
                             mechanisms=["SCRAM-SHA-256"], presence=False, roster=False)
        assert client.mechanism == "SCRAM-SHA-256"
        assert client.boundjid.full == f"alice@{HOST}/scram"
        reply = await client.query("set", HOST, SEARCH.format(field="name", value="builder"))
        assert reply["type"] == "result", reply
        jids = [value.text for value in reply.xml.iter(f"{{{NS_DATA}}}value")
                if value.text and value.text.endswith("@" + HOST)]
        assert jids == [f"bob@{HOST}"], reply
        reply = await client.query("get", f"bob@{HOST}", "<vCard xmlns='vcard-temp'/>")
        photo = reply.xml.find(".//{vcard-temp}BINVAL")
        assert photo is not None and base64.b64decode(photo.text) == slapd.PHOTO, reply
        assert reply.xml.find(".//{vcard-temp}FN").text == "Bob Builder"
        await client.close()

    asyncio.run(scenario())
    raw, outcome = plain(bridge, "bob", "not-" + USERS["bob"][1])
    raw.close()
    assert outcome == "not-authorized"


def test_group_members_see_each_other(directory):
    """Members of the directory group staff find each other in their rosters under the group's name,
    and alice sees bob's presence when he comes online."""
    bridge, _ = directory

    async def scenario():
        alice = await login(f"alice@{HOST}/desk", USERS["alice"][1], bridge.port, mechanisms=["PLAIN"])
        item = alice.client_roster[f"bob@{HOST}"]
        assert (item["subscription"], item["groups"]) == ("both", ["staff"]), alice.client_roster
        bob = await login(f"bob@{HOST}/phone", USERS["bob"][1], bridge.port, mechanisms=["PLAIN"])
        presence = await next_item(alice.presences, lambda stanza: stanza["from"].full == f"bob@{HOST}/phone",
                                   what="bob's presence")
        assert presence["type"] == "available"
        await bob.close()
        await alice.close()

    asyncio.run(scenario())


@pytest.mark.skipif(SIPP is None, reason="sipp is missing (Debian package sip-tester)")
def test_phone_registers_after_the_first_login(directory, tmp_path):
    """After alice's first XMPP login with her directory password, sipp registers her phone with the
    same password (SIP digest against the HA1 kept at that login)."""
    bridge, _ = directory
    raw, outcome = plain(bridge, "alice", USERS["alice"][1])
    raw.close()
    assert outcome == "success"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        local_port = probe.getsockname()[1]
    scenario = os.path.join(os.path.dirname(__file__), "sipp", "register_domain.xml")
    done = subprocess.run([SIPP, f"127.0.0.1:{bridge.sip_ports['sip-udp']}", "-sf", scenario, "-m", "1",
                           "-i", "127.0.0.1", "-p", str(local_port), "-t", "u1", "-s", "alice", "-au", "alice",
                           "-ap", USERS["alice"][1], "-auth_uri", HOST, "-key", "domain", HOST, "-nostdin",
                           "-timeout", "20s", "-timeout_error", "-trace_err", "-error_file",
                           str(tmp_path / "sipp.errors")], capture_output=True, text=True, timeout=60,
                          cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr + bridge.tail(30)


def test_scram_before_any_plain_login_fails(directory):
    """Before a user's first PLAIN login there are no SCRAM records to check against: SCRAM fails."""
    bridge, _ = directory
    raw = RawClient(bridge.port, server_hostname=HOST)
    try:
        raw.secure(HOST)
        outcome = scram_login(raw, "bob", USERS["bob"][1], mechanism="SCRAM-SHA-256")
        assert outcome.tag == f"{{{NS_SASL}}}failure", raw.dump()
    finally:
        raw.close()


@pytest.mark.parametrize("name", ["*", "*)(uid=*", "alice)(|(uid=*", "*)(|(objectClass=*", "al*"])
def test_filter_injection_in_login_names(directory, name):
    """A login name that would widen the search filter finds nobody, even with a real user's password."""
    bridge, _ = directory
    raw, outcome = plain(bridge, name, USERS["alice"][1])
    raw.close()
    assert outcome == "not-authorized"


def test_failover_and_unreachable_directory(directory):
    """With the first slapd stopped the second answers logins; with both stopped a login answers
    temporary-auth-failure and the session already up stays up."""
    bridge, servers = directory
    session = RawClient(bridge.port, server_hostname=HOST)
    try:
        session.login("alice", USERS["alice"][1], host=HOST, resource="live")
        servers[0].stop()
        raw, outcome = plain(bridge, "bob", USERS["bob"][1])
        raw.close()
        assert outcome == "success"
        servers[1].stop()
        raw, outcome = plain(bridge, "bob", USERS["bob"][1])
        raw.close()
        assert outcome == "temporary-auth-failure"
        session.send(f"<iq type='get' id='still-up' to='{HOST}'><ping xmlns='urn:xmpp:ping'/></iq>")
        reply = session.expect("{jabber:client}iq")
        assert (reply.get("id"), reply.get("type")) == ("still-up", "result"), session.dump()
    finally:
        session.close()


def test_certificate_of_another_authority_is_refused(tmp_path, start_server):
    """A slapd whose certificate the configured ca_file did not sign is never used: logins answer
    temporary-auth-failure, and the password is never sent to it."""
    other = CertificateAuthority(tmp_path / "other", name="other.bridge.test")
    bridge, servers = start_directory(tmp_path, start_server, trusted_ca=other.ca_file)
    try:
        raw, outcome = plain(bridge, "alice", USERS["alice"][1])
        raw.close()
        assert outcome == "temporary-auth-failure"
        assert any("certificate verify failed" in line for line in bridge.lines), bridge.tail(30)
    finally:
        stop_directory(bridge, servers)


@pytest.mark.skipif(SMSC_MISSING, reason="node or the smpp package (.ci/install-test-peers) is missing")
def test_sms_to_the_number_in_the_directory(tmp_path, start_server):
    """bob has set no number; alice writes to him while he is offline, and the test SMSC receives the
    SMS at the mobile number of his directory entry."""
    smsc = SMSC()
    bridge, servers = start_directory(
        tmp_path, start_server, host_options='offline_notification = "sms"\n',
        tables=('[sms]\nenabled = true\ndomain = "sms.localhost"\nquiet_window_minutes = 0\n'
                f'[smsc.test]\nport = {smsc.port}\nsystem_id = "bridge"\npassword = "pw"\nsource_addr = "1000"\n'))
    try:
        smsc.wait(lambda event: event["event"] == "bind")

        async def scenario():
            alice = await login(f"alice@{HOST}/desk", USERS["alice"][1], bridge.port, mechanisms=["PLAIN"])
            alice.send_message(mto=f"bob@{HOST}", mbody="lunch at noon?", mtype="chat")
            sms = await asyncio.to_thread(smsc.wait, lambda event: event["event"] == "submit_sm")
            assert sms["destination_addr"] == USERS["bob"][2].lstrip("+"), sms
            assert sms["message"] == "Alice: lunch at noon?", sms
            await alice.close()

        asyncio.run(scenario())
    finally:
        smsc.stop()
        stop_directory(bridge, servers)
