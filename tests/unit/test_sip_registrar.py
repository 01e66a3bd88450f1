"""The SIP registrar: digest against the accounts, bindings with expiry, un-REGISTER (RFC 3261 10.3)."""

import hashlib

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core.accounts import DIGEST, STORE, InvalidName, make_records
from bridge.core.directory import DirectoryUnavailable
from bridge.gateways.sip import digest
from bridge.gateways.sip.gateway import SIPGateway
from bridge.gateways.sip.registrar import ProvenAlgorithms
from bridge.gateways.sip.message import Request, parse_datagram
from bridge.gateways.sip.transaction import new_branch

from .helpers import Harness, gateway_context, result_of

SOURCE = ("192.0.2.7", 5062)
# What a phone's request carries beyond the minimum, as real ones do: enough that the gateway's
# answers to it need no trimming (an unverified UDP source is never answered with more bytes
# than it sent; the tests of that send short requests).
PHONE_HEADERS = (
    ("User-Agent", "bridge-tests/1.0 (a softphone)"),
    ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, MESSAGE, SUBSCRIBE, NOTIFY, PRACK, UPDATE, REFER"),
    ("Supported", "replaces, path, gruu, outbound, timer, 100rel"),
    ("Accept", "application/sdp, application/pidf+xml, text/plain, message/sipfrag"),
)


def make_config(**sip):
    document = {"c2s": {"require_encryption": False}, "sip": {"enabled": True, **sip},
                "hosts": {"localhost": {"aliases": ["alias.test"]}, "example.test": {}}}
    return configuration.parse(document, "test.toml")


class FakeUDP:
    """A UDP transport as the transaction layer sees it: records what is sent, as the peer parses it."""

    name = "UDP"
    reliable = False

    def __init__(self):
        self.sent = []

    def send(self, message, address):
        self.sent.append((parse_datagram(message.to_bytes()), address))

    def local_address(self):
        return ("0.0.0.0", 5060)


def hexdigest(algorithm, text):
    return {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[algorithm](text.encode()).hexdigest()


def authorization(challenge, user, password, uri="sip:localhost", nc=1, cnonce="c0ffee", username=None,
                  method="REGISTER"):
    """The Authorization a UA computes for a WWW-Authenticate value (qop=auth)."""
    params = digest.parse_authorization(challenge.replace("Digest ", "Digest username=\"x\", uri=\"x\", "
                                                          "response=\"x\", ", 1)).params
    algorithm, realm, nonce = params["algorithm"], params["realm"], params["nonce"]
    ha1 = hexdigest(algorithm, f"{user}:{realm}:{password}")
    ha2 = hexdigest(algorithm, f"{method}:{uri}")
    nc = f"{nc:08x}"
    response = hexdigest(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
    return (f'Digest username="{username or user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm={algorithm}, qop=auth, nc={nc}, cnonce="{cnonce}"')


class Phone:
    """A UA registering through the gateway: builds REGISTERs, keeps Call-ID and CSeq."""

    def __init__(self, test, aor="sip:alice@localhost", call_id="reg-1@192.0.2.7"):
        self.test = test
        self.aor = aor
        self.call_id = call_id
        self.cseq = 0

    def request(self, contacts=("<sip:alice@192.0.2.7:5062>",), expires=None, auth=None, branch=None,
                uri="sip:localhost", via_params=";rport"):
        self.cseq += 1
        request = Request("REGISTER", uri)
        request.headers.add("Via", f"SIP/2.0/UDP 192.0.2.7:5062;branch={branch or new_branch()}{via_params}")
        request.headers.add("Max-Forwards", "70")
        request.headers.add("From", f"<{self.aor}>;tag=f1")
        request.headers.add("To", f"<{self.aor}>")
        request.headers.add("Call-ID", self.call_id)
        request.headers.add("CSeq", f"{self.cseq} REGISTER")
        for name, value in PHONE_HEADERS:
            request.headers.add(name, value)
        for contact in contacts:
            request.headers.add("Contact", contact)
        if expires is not None:
            request.headers.add("Expires", str(expires))
        if auth is not None:
            request.headers.add("Authorization", auth)
        return request

    def send(self, request, source=SOURCE):
        return self.test.exchange(request, source=source)

    def register(self, password="secret", algorithm="SHA-256", user=None, source=SOURCE, **options):
        """REGISTER, answer the challenge for ``algorithm``; the final response."""
        challenge = self.send(self.request(**options), source)
        self.test.assertEqual(challenge.status, 401)
        value = next(v for v in challenge.headers.get_all("WWW-Authenticate") if f"algorithm={algorithm}" in v)
        uri = options.get("uri", "sip:localhost")
        auth = authorization(value, user or self.aor.split(":")[1].split("@")[0], password, uri=uri)
        return self.send(self.request(auth=auth, **options), source)


class RegistrarTestCase(SynchronousTestCase):
    def setUp(self):
        self.harness = Harness(make_config())
        self.clock = self.harness.clock
        self.harness.add_user("alice@localhost", "secret")
        self.harness.add_user("bob@localhost", "hunter2")
        self.harness.add_user("olivia@example.test", "olivia-pw")
        self.gateway = SIPGateway(gateway_context(self.harness.server, "sip", self.harness.config.sip))
        self.transport = FakeUDP()

    def exchange(self, request, source=SOURCE):
        """Send ``request`` as if from ``source``; the response the gateway sent for it."""
        before = len(self.transport.sent)
        self.gateway.message_received(parse_datagram(request.to_bytes()), self.transport, source)
        self.assertEqual(len(self.transport.sent), before + 1, "exactly one response expected")
        return self.transport.sent[-1][0]

    def contacts(self, response):
        return sorted((str(a.uri), a.expires) for a in response.contacts)


class DigestTests(RegistrarTestCase):
    def test_challenge_offers_md5_then_sha256(self):
        """A REGISTER without credentials gets 401, realm = the host, MD5 first (the phones that answer
        only the first challenge know it), SHA-256 second, qop=auth."""
        response = Phone(self).send(Phone(self).request())
        self.assertEqual(response.status, 401)
        values = response.headers.get_all("WWW-Authenticate")
        self.assertEqual(len(values), 2)
        self.assertIn("algorithm=MD5", values[0])
        self.assertIn("algorithm=SHA-256", values[1])
        for value in values:
            self.assertIn('realm="localhost"', value)
            self.assertIn('qop="auth"', value)
        self.assertIsNotNone(response.to_address.tag)

    def test_register_with_either_algorithm(self):
        """The right password, with SHA-256 or with MD5 (two phones), binds the contact: 200 lists it with
        expires."""
        for port, algorithm in ((5062, "SHA-256"), (5064, "MD5")):
            response = Phone(self, call_id=f"c-{algorithm}").register(algorithm=algorithm, source=("192.0.2.7", port))
            self.assertEqual(response.status, 200, response.reason)
            self.assertEqual(self.contacts(response), [("sip:alice@192.0.2.7:5062", 3600)])
            self.assertIsNotNone(response.headers.get("Date"))

    def test_wrong_password_is_forbidden(self):
        """A wrong answer on a live nonce is refused with 403, and nothing is bound."""
        response = Phone(self).register(password="wrong")
        self.assertEqual(response.status, 403)
        self.assertEqual(self.gateway.registrar.bindings.current("localhost", "alice"), [])

    def test_algorithm_chosen_by_what_the_phone_proved(self):
        """A phone that comes back without credentials after a challenge naming MD5 and SHA-256 (it could
        answer neither, as baresip 1.0) is challenged with MD5 alone, and registers with it; a phone that
        answered with an algorithm is challenged with that one alone; another source gets both."""
        phone = Phone(self)
        self.assertEqual(len(phone.send(phone.request()).headers.get_all("WWW-Authenticate")), 2)
        retry = phone.send(phone.request())
        [value] = retry.headers.get_all("WWW-Authenticate")
        self.assertIn("algorithm=MD5", value)
        auth = authorization(value, "alice", "secret")
        self.assertEqual(phone.send(phone.request(auth=auth)).status, 200)
        self.assertEqual(Phone(self, call_id="later").register(algorithm="MD5").status, 200)
        [value] = Phone(self).send(Phone(self).request()).headers.get_all("WWW-Authenticate")
        self.assertIn("algorithm=MD5", value)
        other = ("192.0.2.8", 5062)
        self.assertEqual(Phone(self, call_id="sha").register(algorithm="SHA-256", source=other).status, 200)
        [value] = Phone(self).send(Phone(self).request(), source=other).headers.get_all("WWW-Authenticate")
        self.assertIn("algorithm=SHA-256", value)
        self.assertEqual(len(Phone(self).send(Phone(self).request(), source=("192.0.2.9", 5062))
                             .headers.get_all("WWW-Authenticate")), 2)

    def test_proven_algorithms_forgotten_and_bounded(self):
        """What a source proved is forgotten after its lifetime, and no more than MAX_SOURCES are kept."""
        proven = ProvenAlgorithms(self.clock, ("MD5", "SHA-256"), 100)
        proven.answered(("192.0.2.1", 5060), "SHA-256")
        self.assertEqual(proven.offer(("192.0.2.1", 5060)), ("SHA-256",))
        self.clock.advance(101)
        self.assertEqual(proven.offer(("192.0.2.1", 5060)), ("MD5", "SHA-256"))
        proven.MAX_SOURCES = 50
        for index in range(200):
            proven.answered(("198.51.100.1", index), "MD5")
        self.assertLessEqual(len(proven), 50)
        self.assertEqual(proven.offer(("198.51.100.1", 199)), ("MD5",))

    def test_guessing_is_cut_off(self):
        """After ten wrong answers in a minute from one address even the right password is refused,
        until the minute has passed."""
        for attempt in range(10):
            self.assertEqual(Phone(self, call_id=f"guess-{attempt}").register(password=f"guess{attempt}").status, 403)
        refused = Phone(self, call_id="right-too-soon").register()
        self.assertEqual((refused.status, refused.reason), (403, "Forbidden (too many failed attempts)"))
        self.clock.advance(61)
        self.assertEqual(Phone(self, call_id="right-later").register().status, 200)

    def test_guesses_counted_against_the_real_peer(self):
        """Wrong answers are counted against the address they came from, whatever Via received= the
        request names: rotating it does not reset the count, and naming a victim's address does not
        lock the victim out."""
        victim = ("198.51.100.20", 5060)
        for attempt in range(10):
            phone = Phone(self, call_id=f"rotate-{attempt}")
            via = f";received=203.0.113.{attempt}"
            self.assertEqual(phone.register(password=f"guess{attempt}", via_params=via).status, 403)
        refused = Phone(self, call_id="right-too-soon").register(via_params=";received=203.0.113.99")
        self.assertEqual((refused.status, refused.reason), (403, "Forbidden (too many failed attempts)"))
        for attempt in range(10):
            Phone(self, call_id=f"frame-{attempt}").register(password="wrong", via_params=f";received={victim[0]}")
        self.assertEqual(Phone(self, call_id="victim").register(source=victim).status, 200)

    def test_unknown_user_and_other_users_address(self):
        """An unknown user, and bob's right password used for alice's address, get 403."""
        self.assertEqual(Phone(self, aor="sip:nobody@localhost").register().status, 403)
        self.assertEqual(Phone(self).register(user="bob", password="hunter2").status, 403)

    def test_stale_nonce(self):
        """A right answer on an expired nonce gets 401 stale=true; answering the new one succeeds."""
        phone = Phone(self)
        challenge = phone.send(phone.request())
        self.clock.advance(301)
        auth = authorization(challenge.headers.get("WWW-Authenticate"), "alice", "secret")
        response = phone.send(phone.request(auth=auth))
        self.assertEqual(response.status, 401)
        fresh = response.headers.get("WWW-Authenticate")
        self.assertIn("stale=true", fresh)
        self.assertEqual(phone.send(phone.request(auth=authorization(fresh, "alice", "secret"))).status, 200)

    def test_foreign_nonce_is_challenged_again(self):
        """A nonce not issued here (e.g. before a restart) gets a fresh 401, not 403."""
        other = digest.DigestAuthenticator("localhost", b"another secret", self.clock)
        auth = authorization(other.challenges()[0], "alice", "secret")
        phone = Phone(self)
        response = phone.send(phone.request(auth=auth))
        self.assertEqual(response.status, 401)
        self.assertNotIn("stale", response.headers.get("WWW-Authenticate"))

    def test_replayed_nonce_count(self):
        """The same nonce and nc in a new transaction is challenged again (401)."""
        phone = Phone(self)
        challenge = phone.send(phone.request())
        auth = authorization(challenge.headers.get("WWW-Authenticate"), "alice", "secret")
        self.assertEqual(phone.send(phone.request(auth=auth)).status, 200)
        self.assertEqual(phone.send(phone.request(auth=auth)).status, 401)

    def test_digest_uri_must_match(self):
        """Credentials computed for another Request-URI are refused with 400."""
        phone = Phone(self)
        challenge = phone.send(phone.request())
        auth = authorization(challenge.headers.get("WWW-Authenticate"), "alice", "secret", uri="sip:elsewhere")
        self.assertEqual(phone.send(phone.request(auth=auth)).status, 400)

    def test_alias_and_foreign_domain(self):
        """To on an alias authenticates against its host; an unknown domain against the realm's host."""
        self.assertEqual(Phone(self, aor="sip:alice@alias.test").register().status, 200)
        phone = Phone(self, aor="sip:alice@192.0.2.1", call_id="c-ip")
        self.assertIn('realm="localhost"', phone.send(phone.request()).headers.get("WWW-Authenticate"))
        self.assertEqual(Phone(self, aor="sip:alice@192.0.2.1", call_id="c-ip2").register().status, 200)
        olivia = Phone(self, aor="sip:olivia@example.test", call_id="c-o")
        self.assertIn('realm="example.test"', olivia.send(olivia.request()).headers.get("WWW-Authenticate"))
        self.assertEqual(Phone(self, aor="sip:olivia@example.test", call_id="c-o2")
                         .register(password="olivia-pw").status, 200)

    def test_configured_realm(self):
        """realm names the host that answers for domains that are not hosts."""
        self.gateway = SIPGateway(gateway_context(self.harness.server, "sip", make_config(realm="example.test").sip))
        phone = Phone(self, aor="sip:olivia@192.0.2.1")
        self.assertIn('realm="example.test"', phone.send(phone.request()).headers.get("WWW-Authenticate"))

    def test_account_without_digest_secrets(self):
        """An account whose password predates digest secrets cannot register until it is set again."""
        records = result_of(self.harness.storage.get("localhost", "alice", STORE))
        del records[DIGEST]
        result_of(self.harness.storage.set("localhost", "alice", STORE, records))
        self.assertEqual(Phone(self).register().status, 403)
        result_of(self.harness.server.accounts.set_password("localhost", "alice", "secret"))
        self.assertEqual(Phone(self, call_id="again").register().status, 200)


    def test_unreachable_directory_is_503(self):
        """When the host's directory does not answer, a REGISTER with credentials gets 503 and is not
        counted as a wrong password."""
        self.patch(self.harness.server.accounts, "digest_ha1",
                   lambda *args: defer.fail(DirectoryUnavailable("down")))
        response = Phone(self).register()
        self.assertEqual(response.status, 503)
        self.assertEqual(len(self.gateway.registrar.failures), 0)


class BindingTests(RegistrarTestCase):
    def test_several_contacts_with_their_own_expiry(self):
        """Two phones of one user are both listed, each with the time it has left; expired ones go."""
        desk = Phone(self, call_id="desk").register(contacts=("<sip:alice@192.0.2.7:5062>;expires=600",))
        self.assertEqual(desk.status, 200)
        self.clock.advance(100)
        soft = Phone(self, call_id="soft").register(contacts=("<sip:alice@198.51.100.3:5070;transport=tcp>",),
                                                    expires=300)
        self.assertEqual(self.contacts(soft), [("sip:alice@192.0.2.7:5062", 500),
                                               ("sip:alice@198.51.100.3:5070;transport=tcp", 300)])
        self.clock.advance(301)
        bound = self.gateway.registrar.bindings.current("localhost", "alice")
        self.assertEqual([b.uri for b in bound], ["sip:alice@192.0.2.7:5062"])
        self.assertEqual(bound[0].source, SOURCE)
        self.clock.advance(200)
        self.assertEqual(self.gateway.registrar.bindings.current("localhost", "alice"), [])

    def test_query_and_refresh(self):
        """A REGISTER without Contact lists the bindings; a refresh from the same Call-ID renews one."""
        phone = Phone(self)
        phone.register(expires=120)
        self.clock.advance(60)
        self.assertEqual(self.contacts(phone.register(contacts=())), [("sip:alice@192.0.2.7:5062", 60)])
        self.assertEqual(self.contacts(phone.register(expires=120)), [("sip:alice@192.0.2.7:5062", 120)])

    def test_unregister_one_contact(self):
        """expires=0 on a contact removes that binding only."""
        Phone(self, call_id="a").register(contacts=("<sip:alice@192.0.2.7:5062>",))
        phone = Phone(self, call_id="b")
        phone.register(contacts=("<sip:alice@192.0.2.8>",))
        response = phone.register(contacts=("<sip:alice@192.0.2.8>;expires=0",))
        self.assertEqual(self.contacts(response), [("sip:alice@192.0.2.7:5062", 3600)])

    def test_unregister_all(self):
        """Contact: * with Expires: 0 removes every binding; the 200 lists none."""
        Phone(self, call_id="a").register(contacts=("<sip:alice@192.0.2.7:5062>",))
        phone = Phone(self, call_id="b")
        phone.register(contacts=("<sip:alice@192.0.2.8>",))
        response = phone.register(contacts=("*",), expires=0)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.contacts, [])
        self.assertEqual(len(self.gateway.registrar.bindings), 0)

    def test_star_needs_expires_zero(self):
        """Contact: * without Expires: 0 is a bad request."""
        self.assertEqual(Phone(self).register(contacts=("*",)).status, 400)
        self.assertEqual(Phone(self).register(contacts=("*",), expires=60).status, 400)

    def test_interval_too_brief_and_clamped(self):
        """Below min_expires_seconds: 423 with Min-Expires; above the maximum: cut to it."""
        response = Phone(self).register(expires=10)
        self.assertEqual(response.status, 423)
        self.assertEqual(response.headers.get("Min-Expires"), "60")
        self.assertEqual(self.contacts(Phone(self, call_id="x").register(expires=999999)),
                         [("sip:alice@192.0.2.7:5062", 3600)])

    def test_out_of_order_cseq(self):
        """A REGISTER of the same Call-ID with an older CSeq than the binding's fails (500)."""
        phone = Phone(self)
        phone.register()
        phone.cseq = 0
        self.assertEqual(phone.register().status, 500)

    def test_too_many_contacts(self):
        """More contacts than max_contacts_per_user are refused, and none of them is bound."""
        self.gateway = SIPGateway(gateway_context(self.harness.server, "sip", make_config(max_contacts_per_user=2).sip))
        contacts = [f"<sip:alice@192.0.2.{n}>" for n in (1, 2, 3)]
        self.assertEqual(Phone(self).register(contacts=contacts).status, 403)
        self.assertEqual(len(self.gateway.registrar.bindings), 0)

    def test_periodic_prune(self):
        """The gateway forgets expired bindings every minute, even of users who never come back."""
        self.gateway.start()
        self.addCleanup(self.gateway.stop)
        Phone(self).register(expires=60)
        self.assertEqual(len(self.gateway.registrar.bindings), 1)
        self.clock.advance(120)
        self.assertEqual(self.gateway.registrar.bindings._table, {})

    def test_retransmission_absorbed(self):
        """A retransmitted authenticated REGISTER gets the same 200 again and is not handled twice
        (handled twice, its nonce count would be a replay and get 401)."""
        phone = Phone(self)
        challenge = phone.send(phone.request())
        auth = authorization(challenge.headers.get("WWW-Authenticate"), "alice", "secret")
        request = phone.request(auth=auth, branch="z9hG4bK-retransmitted")
        first = phone.send(request)
        again = phone.send(request)
        self.assertEqual(first.status, 200)
        self.assertEqual(again.to_bytes(), first.to_bytes())


class AccountSecretTests(SynchronousTestCase):
    def test_ha1_kept_when_password_set(self):
        """create and set_password store HA1(user:host:password) for MD5 and SHA-256 beside the SCRAM
        records; the values are those digest.ha1 computes."""
        harness = Harness()
        accounts = harness.server.accounts
        result_of(accounts.create("localhost", "alice", "first"))
        for algorithm in ("MD5", "SHA-256"):
            self.assertEqual(result_of(accounts.digest_ha1("localhost", "alice", "localhost", algorithm)),
                             digest.ha1(algorithm, "alice", "localhost", "first"))
        result_of(accounts.set_password("localhost", "alice", "second"))
        self.assertEqual(result_of(accounts.digest_ha1("localhost", "alice", "localhost", "MD5-sess")),
                         digest.ha1("MD5", "alice", "localhost", "second"))
        self.assertIsNone(result_of(accounts.digest_ha1("localhost", "alice", "other.realm", "MD5")))
        self.assertIsNone(result_of(accounts.digest_ha1("localhost", "nobody", "localhost", "MD5")))
        records = result_of(accounts.credentials("localhost", "alice"))
        self.assertIn("SCRAM-SHA-256", records)


class DigestSecretPolicyTests(SynchronousTestCase):
    def accounts(self, sip=None, **host):
        document = {"hosts": {"localhost": host}}
        if sip is not None:
            document["sip"] = sip
        return Harness(configuration.parse(document, "test.toml"))

    def test_no_ha1_where_sip_is_not_used(self):
        """A host with sip_digest = false, or a server whose SIP gateway is off, stores no HA1 at all (only
        the SCRAM records); setting the password again on such a host removes an HA1 kept before."""
        for harness in (self.accounts(sip_digest=False), self.accounts(sip={"enabled": False})):
            accounts = harness.server.accounts
            result_of(accounts.create("localhost", "alice", "pw"))
            records = result_of(accounts.credentials("localhost", "alice"))
            self.assertNotIn(DIGEST, records)
            self.assertIn("SCRAM-SHA-256", records)
            self.assertIsNone(result_of(accounts.digest_ha1("localhost", "alice", "localhost", "MD5")))
        harness = self.accounts(sip_digest=False)
        result_of(harness.storage.set("localhost", "bob", STORE, make_records("localhost", "bob", "old")))
        result_of(harness.server.accounts.set_password("localhost", "bob", "new"))
        self.assertNotIn(DIGEST, result_of(harness.server.accounts.credentials("localhost", "bob")))

    def test_only_the_offered_algorithms(self):
        """With digest_algorithms = ["SHA-256"] no MD5 HA1 is kept (it would be guessed at MD5's speed)."""
        accounts = self.accounts(sip={"digest_algorithms": ["SHA-256"]}).server.accounts
        result_of(accounts.create("localhost", "alice", "pw"))
        self.assertEqual(list(result_of(accounts.credentials("localhost", "alice"))[DIGEST]["localhost"]),
                         ["SHA-256"])



class NoDigestHostTests(RegistrarTestCase):
    def setUp(self):
        config = configuration.parse({"hosts": {"localhost": {"sip_digest": False}}}, "test.toml")
        self.harness = Harness(config)
        self.harness.add_user("alice@localhost", "secret")
        self.gateway = SIPGateway(gateway_context(self.harness.server, "sip", config.sip))
        self.transport = FakeUDP()

    def test_account_without_ha1_cannot_register(self):
        """An account of a host without sip_digest gets 403 for the right password: it has no HA1."""
        self.assertEqual(Phone(self).register(algorithm="MD5").status, 403)


class NewNameTests(SynchronousTestCase):
    def test_escape_characters_refused_in_new_names(self):
        """A new account whose name holds % or a backslash (the escapes of SIP URIs, XEP-0106 and
        quoted strings) is refused with an error naming the character; other names are created."""
        accounts = Harness().server.accounts
        for name, character in (("%61dmin", "%"), ("back\\5cslash", "\\"), ("a%5c\\b", "%")):
            failure = self.failureResultOf(accounts.create("localhost", name, "pw"), InvalidName)
            self.assertIn(f"may not contain {character}", str(failure.value))
            self.assertFalse(result_of(accounts.exists("localhost", name)))
        result_of(accounts.create("localhost", "plain.name-1", "pw"))
        self.assertTrue(result_of(accounts.exists("localhost", "plain.name-1")))


class SIPConfigTests(SynchronousTestCase):
    def problems(self, **sip):
        error = self.assertRaises(configuration.ConfigError, configuration.parse, {"sip": sip}, "t.toml")
        return error.problems

    def test_defaults(self):
        """On by default, on UDP and TCP 5060 and TLS 5061; SHA-256 offered before MD5; no DNS server of
        its own (the system's resolver)."""
        sip = configuration.parse({}, "t.toml").sip
        self.assertTrue(sip.enabled)
        self.assertEqual(sip.dns_server, "")
        self.assertEqual((sip.udp_endpoints, sip.tcp_endpoints, sip.tls_endpoints),
                         (["udp:5060"], ["tcp:5060"], ["tcp:5061"]))
        self.assertEqual(sip.digest_algorithms, ["MD5", "SHA-256"])
        self.assertEqual(sip.tls_min_version, "1.2")
        self.assertEqual((sip.max_server_transactions, sip.max_server_transaction_bytes), (10000, 33554432))
        self.assertEqual(len(self.problems(max_server_transactions=0, max_server_transaction_bytes=1000)), 2)

    def test_udp_endpoints(self):
        """udp:PORT and udp:PORT:interface=ADDRESS are read; anything else is an error naming the key."""
        self.assertEqual(configuration.parse_udp_endpoint("udp:5060"), (5060, ""))
        self.assertEqual(configuration.parse_udp_endpoint("udp:0:interface=::1"), (0, "::1"))
        for bad in ("5060", "tcp:5060", "udp:x", "udp:70000", "udp:5060:iface=1.2.3.4"):
            self.assertRaises(ValueError, configuration.parse_udp_endpoint, bad)
        [problem] = self.problems(udp_endpoints=["udp:5060", "5060"])
        self.assertIn("sip.udp_endpoints", problem)

    def test_realm_algorithms_expiry_and_address(self):
        """realm must be a host; digest_algorithms a non-empty set of SHA-256/MD5; the default expiry
        within min and max; advertised_address HOST[:PORT]."""
        self.assertEqual(len(self.problems(realm="nowhere.test")), 1)
        self.assertEqual(len(self.problems(digest_algorithms=[])), 1)
        self.assertEqual(len(self.problems(digest_algorithms=["SHA-512"])), 1)
        self.assertEqual(len(self.problems(default_expires_seconds=30)), 1)
        self.assertEqual(len(self.problems(advertised_address="host:port")), 1)
        self.assertEqual(configuration.parse_host_port("[2001:db8::1]:5080"), ("[2001:db8::1]", 5080))
        self.assertEqual(configuration.parse_host_port("sip.example.com"), ("sip.example.com", None))


class AlgorithmOrderTests(RegistrarTestCase):
    def test_md5_only(self):
        """digest_algorithms = ["MD5"] offers one MD5 challenge, and SHA-256 answers are refused."""
        self.gateway = SIPGateway(gateway_context(self.harness.server, "sip", make_config(digest_algorithms=["MD5"]).sip))
        phone = Phone(self)
        [value] = phone.send(phone.request()).headers.get_all("WWW-Authenticate")
        self.assertIn("algorithm=MD5", value)
        self.assertEqual(Phone(self, call_id="md5").register(algorithm="MD5").status, 200)
