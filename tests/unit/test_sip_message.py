"""Tests for bridge.gateways.sip.message: tables of valid, torture-style and malformed messages.

The torture cases are our own messages, each modelled on the named case of
RFC 4475; every table runs as one datagram, whole on a stream, and one byte
at a time on a stream.
"""

import random

from twisted.trial.unittest import SynchronousTestCase

from bridge.gateways.sip.message import (
    DROP, KEEPALIVE, GrammarError, Headers, Limits, Message, Request, Response,
    SIPParseError, StreamFramer, error_response, make_response, parse_address,
    parse_datagram, parse_uri, parse_via, split_list,
)


def msg(*lines, body=b"", length=True):
    """A message from header lines; Content-Length added unless told not to."""
    head = "\r\n".join(lines)
    if length:
        head += f"\r\nContent-Length: {len(body)}"
    return head.encode("utf-8") + b"\r\n\r\n" + body


BASE = (
    "Via: SIP/2.0/UDP client.example.net:5060;branch=z9hG4bK74bf9",
    "Max-Forwards: 70",
    "From: Alice <sip:alice@example.net>;tag=9fxced76sl",
    "To: Bob <sip:bob@example.com>",
    "Call-ID: 3848276298220188511@client.example.net",
)


def request(method="OPTIONS", uri="sip:bob@example.com", cseq=None, extra=(), body=b""):
    return msg(f"{method} {uri} SIP/2.0", *BASE, f"CSeq: {cseq or '1 ' + method}", *extra, body=body)


# (name, bytes, check) -- check(message) returns a list of (actual, expected)
VALID = [
    ("plain OPTIONS", request(), lambda m: [(m.method, "OPTIONS"), (m.cseq.number, 1)]),
    ("compact forms and folding (wsinv)", msg(
        "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0",
        "TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n",
        "f   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8",
        "MaX-fOrWaRdS: 0068",
        "Call-ID: wsinv.ndaksdj@192.0.2.1",
        "cseq: 0009\r\n  INVITE",
        "Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;rport;branch=390skdjuw",
        "s :",
        "NewFangledHeader:   newfangled value\r\n continued newfangled value",
        "v:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239",
        "m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\r\n newvalue ;\r\n secondparam ; q = 0.33",
        body=b"v=0\r\n"), lambda m: [
            (len(m.vias), 3),
            (m.vias[1].branch, "z9hG4bK9ikj8"),
            (m.vias[2].branch, "z9hG4bK30239"),
            (m.vias[0].rport, True),
            (m.to_address.tag, "1918181833n"),
            (m.from_address.display_name, 'J Rosenberg \\"'),
            (m.from_address.tag, "98asjd8"),
            (m.cseq.number, 9),
            (m.headers.get("Max-Forwards"), "0068"),
            (m.headers.get("newfangledheader"), "newfangled value continued newfangled value"),
            (m.contacts[0].q, 0.33),
            (m.headers.get("Subject"), ""),
            (m.body, b"v=0\r\n")]),
    ("unusual method token (intmeth)", request(method="!interesting-Method0123456789_*+`.%indeed'~"),
     lambda m: [(m.method, "!interesting-Method0123456789_*+`.%indeed'~")]),
    ("escaped characters and semicolon in the user part (semiuri, esc01)",
     request(uri="sip:user;par=u%40example.net@example.com"),
     lambda m: [(m.uri.user, "user;par=u%40example.net"), (m.uri.host, "example.com")]),
    ("no space between display name and < (lwsdisp)", request(extra=("Contact: caller<sip:caller@example.com>;expires=60",)),
     lambda m: [(m.contacts[0].display_name, "caller"), (m.contacts[0].expires, 60)]),
    ("unknown transport in Via (transports)", msg(
        "OPTIONS sip:bob@example.com SIP/2.0",
        "Via: SIP/2.0/SCTP t1.example.com;branch=z9hG4bKkdjuw, SIP/2.0/XYZ t2.example.com;branch=z9hG4bK2",
        *BASE[1:], "CSeq: 1 OPTIONS"), lambda m: [([v.transport for v in m.vias], ["SCTP", "XYZ"])]),
    ("empty reason phrase (noreason)", msg("SIP/2.0 200 ", *BASE, "CSeq: 1 OPTIONS"),
     lambda m: [(m.status, 200), (m.reason, "")]),
    ("UTF-8 reason phrase (unreason)", msg("SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять", *BASE, "CSeq: 1 OPTIONS"),
     lambda m: [(m.reason, "= 2**3 * 5**2 но сто девяносто девять")]),
    ("unknown URI scheme (novelsc)", request(uri="soap.beep://192.0.2.103:3002"),
     lambda m: [(m.uri.scheme, "soap.beep"), (m.uri.opaque, "//192.0.2.103:3002")]),
    ("RFC 2543 request without branch (inv2543)", msg(
        "INVITE sip:bob@example.com SIP/2.0", "Via: SIP/2.0/UDP 192.0.2.15", "From: <sip:a@example.net>",
        "To: <sip:bob@example.com>", "Call-ID: 2543@x", "CSeq: 1 INVITE"),
     lambda m: [(m.top_via.branch, None), (m.top_via.sent_by, ("192.0.2.15", 5060))]),
    ("multi-byte body framed by byte count", request(method="MESSAGE", body="héllo ✓".encode()),
     lambda m: [(m.body.decode(), "héllo ✓")]),
    ("IPv6 host and received/rport", msg(
        "REGISTER sips:[2001:db8::10]:5061 SIP/2.0",
        "Via: SIP/2.0/TLS [2001:db8::9]:5061;branch=z9hG4bKas;received=2001:db8::9;rport=1234",
        *BASE[1:], "CSeq: 2 REGISTER", "Contact: *", "Expires: 0"),
     lambda m: [(m.uri.secure, True), (m.uri.port, 5061), (m.top_via.rport, 1234), (m.contacts, ["*"])]),
    ("Contact list with commas inside quotes", request(extra=(
        'Contact: "Doe, John" <sip:j@h1>;q=0.5, <sip:j@h2;transport=tcp>;expires=30',)),
     lambda m: [(len(m.contacts), 2), (m.contacts[0].display_name, "Doe, John"),
                (m.contacts[1].uri.params, {"transport": "tcp"}), (m.contacts[1].expires, 30)]),
]

# (name, bytes, expected code)
MALFORMED = [
    ("unterminated quoted display name (badinv01, quotbal)",
     request(extra=('Contact: "Bob <sip:bob@example.com>',)), 400),
    ("Content-Length larger than the datagram (clerr)", msg(
        "OPTIONS sip:bob@example.com SIP/2.0", *BASE, "CSeq: 1 OPTIONS", "Content-Length: 9999",
        body=b"short", length=False), 400),
    ("negative Content-Length (ncl)", msg("OPTIONS sip:bob@example.com SIP/2.0", *BASE, "CSeq: 1 OPTIONS",
                                          "Content-Length: -999", length=False), 400),
    ("huge CSeq number (scalarlg)", request(cseq="36893488147419103232 OPTIONS"), 400),
    ("huge Max-Forwards (scalar02)", request(extra=("Max-Forwards: 300",)), 400),
    ("port out of range (scalarlg)", request(uri="sip:bob@example.com:4294967301"), 400),
    ("Request-URI in angle brackets (ltgtruri)", request(uri="<sip:bob@example.com>"), 400),
    ("spaces in the Request-URI (lwsruri)", request(uri="sip:bob@example.com; lr"), 400),
    ("two spaces after the method (lwsstart)", request(method="OPTIONS ", uri="sip:bob@example.com"), 400),
    ("unquoted display name with non-token characters (baddn)",
     request(extra=("Contact: Bell, Alexander <sip:a.g.bell@example.com>",)), 400),
    ("version SIP/7.0 (badvers)", msg("OPTIONS sip:bob@example.com SIP/7.0", *BASE, "CSeq: 1 OPTIONS"), 505),
    ("CSeq method differs from the request (mismatch01)", request(cseq="1 INVITE"), 400),
    ("two To headers (multi01)", request(extra=("t: <sip:other@example.com>",)), 400),
    ("two Call-ID headers (multi01)", request(extra=("i: another@x",)), 400),
    ("no Call-ID (insuf)", msg("OPTIONS sip:bob@example.com SIP/2.0", *BASE[:-1], "CSeq: 1 OPTIONS"), 400),
    ("addr-spec with ? outside brackets (regbadct)",
     request(extra=("Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E",)), 400),
    ("malformed header line", request(extra=("this line has no colon",)), 400),
    ("invalid UTF-8 in a header", request().replace(b"Max-Forwards: 70", b"Subject: \xff\xfe"), 400),
    ("control character in a header value", request(extra=("Subject: a\x1cb",)), 400),
    ("Content-Length with a control character", request().replace(b"Content-Length: 0", b"Content-Length: \x1c0"), 400),
    ("body over the limit", request(method="MESSAGE", body=b"x" * 70000), 413),
    ("no Via: nothing to answer to", msg("OPTIONS sip:bob@example.com SIP/2.0", *BASE[1:], "CSeq: 1 OPTIONS"), DROP),
    ("malformed top Via", msg("OPTIONS sip:bob@example.com SIP/2.0", "Via: SIP/2.0/UDP", *BASE[1:],
                              "CSeq: 1 OPTIONS"), DROP),
    ("response with a ten-digit status (bigcode)", msg("SIP/2.0 4294967301 better not break the receiver",
                                                       *BASE, "CSeq: 1 OPTIONS"), DROP),
    ("malformed response headers are dropped", msg("SIP/2.0 200 OK", *BASE), DROP),
    ("garbage start line", msg("\x01\x02 garbage", *BASE), DROP),
]


class DatagramTests(SynchronousTestCase):
    def test_valid(self):
        """Every valid table entry parses from one datagram with the expected fields."""
        for name, data, check in VALID:
            message = parse_datagram(data)
            for actual, expected in check(message):
                self.assertEqual(actual, expected, name)

    def test_malformed(self):
        """Every malformed entry raises SIPParseError with the status to answer or DROP."""
        for name, data, code in MALFORMED:
            error = self.assertRaises(SIPParseError, parse_datagram, data)
            self.assertEqual(error.code, code, f"{name}: {error.reason}")

    def test_error_response_copies_the_dialog_headers(self):
        """A 400 built from a parse error copies Via, From, To, Call-ID and CSeq."""
        error = self.assertRaises(SIPParseError, parse_datagram, request(extra=("Max-Forwards: 999",)))
        response = error_response(error)
        self.assertEqual(response.status, 400)
        self.assertEqual(response.headers.get("Call-ID"), "3848276298220188511@client.example.net")
        self.assertEqual(response.top_via.branch, "z9hG4bK74bf9")
        self.assertEqual(response.cseq.method, "OPTIONS")

    def test_dropped_error_has_no_response(self):
        """A parse error that cannot be answered yields no response."""
        error = self.assertRaises(SIPParseError, parse_datagram, MALFORMED[-2][1])
        self.assertIsNone(error_response(error))

    def test_extra_bytes_after_content_length_discarded(self):
        """On UDP, bytes beyond Content-Length are discarded (dblreq: a second request is ignored)."""
        data = request() + request(method="REGISTER")
        message = parse_datagram(data)
        self.assertEqual((message.method, message.body), ("OPTIONS", b""))

    def test_body_to_end_without_content_length(self):
        """On UDP, a message without Content-Length has its body run to the datagram's end."""
        data = msg("MESSAGE sip:bob@example.com SIP/2.0", *BASE, "CSeq: 1 MESSAGE", body=b"hi", length=False)
        self.assertEqual(parse_datagram(data).body, b"hi")

    def test_keepalive_and_leading_crlf(self):
        """A CRLF keep-alive datagram yields None; CRLFs before a start line are ignored."""
        self.assertIsNone(parse_datagram(b"\r\n\r\n"))
        self.assertEqual(parse_datagram(b"\r\n" + request()).method, "OPTIONS")

    def test_header_section_limit(self):
        """A header section over the limit is dropped without being parsed."""
        data = request(extra=("X-Big: " + "a" * 200,))
        error = self.assertRaises(SIPParseError, parse_datagram, data, Limits(max_header_bytes=100))
        self.assertEqual(error.code, DROP)

    def test_round_trip(self):
        """A parsed message serializes with canonical names and parses to the same fields."""
        for name, data, check in VALID:
            again = parse_datagram(parse_datagram(data).to_bytes())
            for actual, expected in check(again):
                self.assertEqual(actual, expected, name)


def feed(framer, data, step):
    """Feed data in pieces of ``step`` bytes; collect messages and errors."""
    out = []
    for i in range(0, len(data), step):
        framer.receive_data(data[i:i + step])
        while True:
            try:
                item = framer.next_message()
            except SIPParseError as e:
                out.append(e)
                if e.fatal:
                    return out
                continue
            if item is None:
                break
            out.append(item)
    return out


class StreamTests(SynchronousTestCase):
    def test_valid_whole_and_bytewise(self):
        """Valid messages with Content-Length frame the same whole and one byte at a time."""
        for step in (1, 7, 100000):
            stream = b"".join(data for _, data, _ in VALID)
            items = feed(StreamFramer(), stream, step)
            self.assertEqual(len(items), len(VALID), step)
            for (name, _, check), message in zip(VALID, items):
                for actual, expected in check(message):
                    self.assertEqual(actual, expected, f"{name} step {step}")

    def test_malformed_frame_does_not_break_stream(self):
        """A malformed but framed message raises a non-fatal error and the next message still arrives."""
        for step in (1, 100000):
            bad = request(cseq="1 INVITE")
            items = feed(StreamFramer(), bad + request(), step)
            self.assertEqual(len(items), 2)
            self.assertIsInstance(items[0], SIPParseError)
            self.assertEqual((items[0].code, items[0].fatal), (400, False))
            self.assertEqual(items[1].method, "OPTIONS")

    def test_missing_content_length_is_fatal(self):
        """A stream message without Content-Length is answered 400 and the stream is closed."""
        data = msg("MESSAGE sip:bob@example.com SIP/2.0", *BASE, "CSeq: 1 MESSAGE", length=False)
        framer = StreamFramer()
        items = feed(framer, data + request(), 1)
        self.assertEqual(len(items), 1)
        self.assertEqual((items[0].code, items[0].fatal), (400, True))
        self.assertEqual(error_response(items[0]).status, 400)
        self.assertRaises(SIPParseError, framer.next_message)

    def test_compact_content_length_frames(self):
        """The compact form l: frames a stream message, even when folded."""
        data = msg("MESSAGE sip:bob@example.com SIP/2.0", *BASE, "CSeq: 1 MESSAGE", "l:\r\n 5",
                   body=b"hello", length=False)
        items = feed(StreamFramer(), data + request(), 1)
        self.assertEqual([i.body for i in items], [b"hello", b""])

    def test_oversized_body_is_413_and_fatal(self):
        """A Content-Length over the body limit is answered 413 before the body is read."""
        data = request(method="MESSAGE", body=b"x" * 50)
        items = feed(StreamFramer(Limits(max_body_bytes=10)), data, 1)
        self.assertEqual((items[0].code, items[0].fatal), (413, True))

    def test_oversized_header_section_is_dropped(self):
        """A header section that never ends within the limit closes the stream without an answer."""
        items = feed(StreamFramer(Limits(max_header_bytes=64)), b"OPTIONS sip:x SIP/2.0\r\n" + b"X: y\r\n" * 50, 1)
        self.assertEqual((items[0].code, items[0].fatal), (DROP, True))

    def test_conflicting_content_lengths(self):
        """Two different Content-Length values lose the framing: fatal 400."""
        data = msg("OPTIONS sip:bob@example.com SIP/2.0", *BASE, "CSeq: 1 OPTIONS", "Content-Length: 0",
                   "l: 4", length=False, body=b"abcd")
        items = feed(StreamFramer(), data, 1)
        self.assertEqual((items[0].code, items[0].fatal), (400, True))

    def test_keepalive_ping(self):
        """A CRLFCRLF ping between messages yields KEEPALIVE; a lone CRLF is skipped."""
        items = feed(StreamFramer(), b"\r\n\r\n" + request() + b"\r\n" + request(), 1)
        self.assertEqual(items[0], KEEPALIVE)
        self.assertEqual([i.method for i in items[1:]], ["OPTIONS", "OPTIONS"])


class GrammarTests(SynchronousTestCase):
    def test_uri_parts(self):
        """A sip URI yields user, password, host, port, parameters and headers."""
        uri = parse_uri("sips:alice:secret@Example.COM:5061;transport=tls;lr?subject=hi")
        self.assertEqual((uri.scheme, uri.user, uri.password, uri.host, uri.port),
                         ("sips", "alice", "secret", "Example.COM", 5061))
        self.assertEqual(uri.params, {"transport": "tls", "lr": None})
        self.assertEqual(uri.headers, "subject=hi")
        self.assertEqual(uri.aor, "sips:alice@example.com")
        self.assertEqual(str(uri), "sips:alice:secret@Example.COM:5061;transport=tls;lr?subject=hi")

    def test_bad_uris(self):
        """Malformed URIs raise GrammarError."""
        for text in ("sip:", "sip:@host", "sip:a@ho st", "sip:a@host:0", "sip:a@[::1", "nocolon", "sip:a@host;=x"):
            self.assertRaises(GrammarError, parse_uri, text)

    def test_address_forms(self):
        """name-addr keeps URI parameters inside <>; addr-spec parameters belong to the header."""
        a = parse_address('"Alice" <sip:alice@x;transport=tcp>;tag=abc')
        self.assertEqual((a.display_name, a.uri.params, a.tag), ("Alice", {"transport": "tcp"}, "abc"))
        b = parse_address("sip:alice@x;tag=abc")
        self.assertEqual((b.display_name, b.uri.params, b.tag), (None, {}, "abc"))
        self.assertEqual(str(a), '"Alice" <sip:alice@x;transport=tcp>;tag=abc')

    def test_via_parameters(self):
        """Via yields transport, sent-by, branch, received and rport."""
        via = parse_via("SIP/2.0/udp 10.0.0.1:5070;branch=z9hG4bKx;received=192.0.2.4;rport=6000")
        self.assertEqual((via.transport, via.sent_by, via.branch, via.received, via.rport),
                         ("UDP", ("10.0.0.1", 5070), "z9hG4bKx", "192.0.2.4", 6000))
        self.assertRaises(GrammarError, parse_via, "SIP/3.0/UDP host")
        self.assertRaises(GrammarError, parse_via, "SIP/2.0/UDP host;rport=99999")

    def test_split_list(self):
        """Commas inside quotes and angle brackets do not split a list header."""
        self.assertEqual(split_list('"a,b" <sip:x;p=1,2>, <sip:y>,,'), ['"a,b" <sip:x;p=1,2>', "<sip:y>"])

    def test_headers_case_insensitive(self):
        """Header lookups ignore case and expand compact forms."""
        headers = Headers([("v", "a"), ("VIA", "b"), ("call-id", "c")])
        self.assertEqual(headers.get_all("Via"), ["a", "b"])
        self.assertEqual(headers.get("I"), "c")
        headers.set("via", "z")
        self.assertEqual(headers.get_all("v"), ["z"])

    def test_make_response_adds_to_tag(self):
        """make_response copies the dialog headers and adds a To tag when asked."""
        req = parse_datagram(request())
        response = make_response(req, 200, to_tag="srv1")
        self.assertEqual(response.to_address.tag, "srv1")
        self.assertEqual(response.reason, "OK")
        again = parse_datagram(response.to_bytes())
        self.assertIsInstance(again, Response)
        self.assertEqual(again.call_id, req.call_id)
        self.assertIsInstance(req, Request)


class MutationTests(SynchronousTestCase):
    def test_mutated_input_only_raises_parse_errors(self):
        """Table messages with random bytes changed, inserted or deleted (fixed seed) either parse or raise SIPParseError, as datagrams and on streams."""
        rng = random.Random(4475)
        seeds = [data for _, data, _ in VALID] + [data for _, data, _ in MALFORMED]
        for _ in range(1500):
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 6)):
                position = rng.randrange(len(data))
                choice = rng.random()
                if choice < 0.4:
                    data[position] = rng.choice(b'\r\n :;,<>"\\@[]=\x00\xff\x1c')
                elif choice < 0.7:
                    data[position:position] = bytes([rng.choice(b'\r\n :;,<>"\\')])
                else:
                    del data[position]
            data = bytes(data)
            try:
                message = parse_datagram(data)
            except SIPParseError:
                message = None
            if message is not None:
                parse_datagram(message.to_bytes())
            for item in feed(StreamFramer(), data, rng.choice([1, 5, len(data)])):
                self.assertIsInstance(item, (Message, SIPParseError, str))
