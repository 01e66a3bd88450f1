"""HTTP File Upload (XEP-0363): slots on the in-memory server, PUT and GET on the in-memory HTTP listener."""

import os
import shutil
import tempfile
from urllib.parse import urlsplit

from twisted.trial.unittest import SynchronousTestCase

from bridge import config as configuration
from bridge.core.xmlstream import parse_element
from bridge.gateways import upload
from bridge.gateways.http import HTTPFactory
from tests.unit.helpers import Harness, gateway_context
from tests.unit.test_http import HTTPClient, StubBosh

NS = upload.NS_UPLOAD
BASE = "https://localhost:5281"


def condition(stanza):
    return next(child.name for child in stanza.error.elements() if child.name != "text")


class UploadTestCase(SynchronousTestCase):
    options = {}

    def setUp(self):
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder)
        document = {"c2s": {"require_encryption": False}, "data_dir": self.folder,
                    "hosts": {"localhost": {}, "example.net": {}},
                    "upload": {"public_url": BASE, **self.options}}
        self.harness = Harness(configuration.parse(document, "test.toml"))
        self.harness.add_user("alice@localhost")
        self.context = gateway_context(self.harness.server, "upload", self.harness.config.upload)
        self.service = upload.attach(self.context, self.harness.clock, None)
        self.service.start()
        self.addCleanup(self.service.stop)
        self.alice = self.harness.login("alice@localhost/r")
        self.http = HTTPFactory(self.harness.server, self.harness.config.http, StubBosh(), tls=True)

    def slot(self, filename="photo one.jpg", size=10, content_type="image/jpeg", client=None):
        client = client or self.alice
        return client.iq(f"<iq type='get' id='s' to='upload.localhost'><request xmlns='{NS}' filename='{filename}' "
                         f"size='{size}' content-type='{content_type}'/></iq>")

    def urls(self, reply):
        slot = next(reply.elements(NS, "slot"))
        put, get = urlsplit(next(slot.elements(NS, "put"))["url"]), urlsplit(next(slot.elements(NS, "get"))["url"])
        return put.path + "?" + put.query, get.path

    def put(self, target, body, content_type="image/jpeg", length=None):
        client = HTTPClient(self.http)
        head = (f"PUT {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body) if length is None else length}\r\n\r\n")
        client.send(head.encode("latin-1") + body)
        return client.responses()

    def get(self, path, headers=()):
        client = HTTPClient(self.http)
        client.request("GET", path, headers=headers)
        return client.responses()[0]


class SlotTests(UploadTestCase):
    options = {"max_file_bytes": 1000, "quota_bytes_per_user": 1500}

    def test_disco_announces_the_service_and_its_limit(self):
        """disco#info of upload.localhost: store/file, the namespace and the max-file-size form."""
        reply = self.alice.iq("<iq type='get' id='d' to='upload.localhost'>"
                              "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
        query = reply.query
        info = "http://jabber.org/protocol/disco#info"
        identity = next(query.elements(info, "identity"))
        self.assertEqual((identity["category"], identity["type"]), ("store", "file"))
        self.assertIn(NS, [feature["var"] for feature in query.elements(info, "feature")])
        data = "jabber:x:data"
        fields = {field["var"]: str(next(field.elements(data, "value")))
                  for field in next(query.elements(data, "x")).elements(data, "field")}
        self.assertEqual(fields, {"FORM_TYPE": NS, "max-file-size": "1000"})

    def test_slot_urls(self):
        """A slot's GET URL is the PUT URL's path on the configured base, under an unguessable token."""
        reply = self.slot()
        self.assertEqual(reply["type"], "result")
        put, get = self.urls(reply)
        self.assertTrue(put.startswith(get + "?"))
        token, name = upload.split_path(get)
        self.assertEqual(name, "photo%20one.jpg")
        self.assertNotEqual(self.urls(self.slot())[1], get)

    def test_too_large(self):
        """A file over max_file_bytes: not-acceptable with file-too-large and the maximum."""
        reply = self.slot(size=1001)
        self.assertEqual(condition(reply), "not-acceptable")
        too_large = next(reply.error.elements(NS, "file-too-large"))
        self.assertEqual(str(next(too_large.elements(NS, "max-file-size"))), "1000")

    def test_bad_requests(self):
        """A missing or bad name, size or type is not-acceptable."""
        for filename, size, content_type in (("", 10, "a/b"), ("..", 10, "a/b"), ("a&#47;b", 10, "a/b"),
                                             ("a", "ten", "a/b"), ("a", 0, "a/b"), ("a", 10, "bad type"),
                                             ("a", 10, "a/b&#10;X: y")):
            reply = self.slot(filename, size, content_type)
            self.assertEqual(condition(reply), "not-acceptable", (filename, size, content_type))

    def test_quota(self):
        """Past quota_bytes_per_user, counting what is stored: resource-constraint."""
        put, _ = self.urls(self.slot(size=1000))
        self.assertEqual(self.put(put, b"x" * 1000)[0][0], 201)
        self.assertEqual(condition(self.slot(size=600)), "resource-constraint")
        self.assertEqual(self.slot(size=500)["type"], "result")

    def test_remote_users_get_no_slot(self):
        """A slot request from outside the local hosts is refused."""
        request = parse_element(f"<iq type='get' id='r' to='upload.localhost' from='eve@elsewhere.example/x'>"
                                f"<request xmlns='{NS}' filename='a' size='1'/></iq>")
        sent = []
        self.harness.server.router.default_route = type("Remote", (), {"deliver": lambda _, s: sent.append(s)})()
        self.harness.server.router.route(request)
        self.assertEqual(condition(sent[0]), "not-allowed")


class TransferTests(UploadTestCase):
    def test_put_then_get(self):
        """A PUT through the slot stores the body; a GET serves it with the announced type."""
        body = os.urandom(10)
        put, get = self.urls(self.slot())
        self.assertEqual(self.put(put, body)[0][0], 201)
        status, headers, received = self.get(get)
        self.assertEqual((status, received, headers["content-type"]), (200, body, "image/jpeg"))
        self.assertEqual(sorted(os.listdir(os.path.join(self.folder, "upload"))),
                         sorted([upload.split_path(get)[0], upload.split_path(get)[0] + ".json"]))

    def test_range(self):
        """A single byte range is served as 206 with its Content-Range; past the end is 416."""
        put, get = self.urls(self.slot())
        self.put(put, b"0123456789")
        status, headers, body = self.get(get, [("Range", "bytes=2-4")])
        self.assertEqual((status, body, headers["content-range"]), (206, b"234", "bytes 2-4/10"))
        self.assertEqual(self.get(get, [("Range", "bytes=-3")])[2], b"789")
        status, headers, _ = self.get(get, [("Range", "bytes=10-")])
        self.assertEqual((status, headers["content-range"]), (416, "bytes */10"))

    def test_wrong_signature(self):
        """A PUT whose URL was altered (path, size, signature), or with another type than signed, is 403."""
        put, _ = self.urls(self.slot())
        self.assertEqual(self.put(put[:-1] + ("0" if put[-1] != "0" else "1"), b"x" * 10)[0][0], 403)
        self.assertEqual(self.put(put, b"x" * 10, content_type="text/html")[0][0], 403)
        self.assertEqual(self.put(put.replace("photo", "other"), b"x" * 10)[0][0], 403)
        self.assertEqual(self.put(put.replace("size=10", "size=20"), b"x" * 20)[0][0], 403)

    def test_expired_slot(self):
        """A PUT after slot_lifetime_seconds is 403."""
        put, _ = self.urls(self.slot())
        self.harness.clock.advance(self.harness.config.upload.slot_lifetime_seconds + 1)
        self.assertEqual(self.put(put, b"x" * 10)[0][0], 403)

    def test_body_longer_than_announced(self):
        """More bytes than the slot's size: 413; fewer: 400 (by Content-Length or chunked); nothing is kept."""
        put, get = self.urls(self.slot())
        self.assertEqual(self.put(put, b"x" * 11)[0][0], 413)
        self.assertEqual(self.put(put, b"x" * 9)[0][0], 400)
        client = HTTPClient(self.http)
        client.send(f"PUT {put} HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n8\r\nxxxxxxxx\r\n8\r\nxxxxxxxx\r\n0\r\n\r\n")
        self.assertEqual(client.responses()[0][0], 413)
        client = HTTPClient(self.http)
        client.send(f"PUT {put} HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n8\r\nxxxxxxxx\r\n0\r\n\r\n")
        self.assertEqual(client.responses()[0][0], 400)
        self.assertEqual(self.get(get)[0], 404)
        self.assertEqual(os.listdir(os.path.join(self.folder, "upload")), [])

    def test_slot_is_used_once(self):
        """A second PUT to the same slot is refused; the first file stays."""
        put, get = self.urls(self.slot())
        self.put(put, b"a" * 10)
        self.assertEqual(self.put(put, b"b" * 10)[0][0], 409)
        self.assertEqual(self.get(get)[2], b"a" * 10)

    def test_cut_off_upload_leaves_nothing(self):
        """A connection lost in the middle of the body removes the partial file."""
        put, _ = self.urls(self.slot())
        client = HTTPClient(self.http)
        client.send(f"PUT {put} HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\nContent-Length: 10\r\n\r\n"
                    "abc")
        self.assertEqual(os.listdir(os.path.join(self.folder, "upload"))[0].endswith(".part"), True)
        client.drop()
        self.assertEqual(os.listdir(os.path.join(self.folder, "upload")), [])
        self.assertEqual(self.service.uploading, {})

    def test_expiry_spares_uploads_in_progress(self):
        """The expiry loop leaves the partial file of an upload in progress alone; the upload completes."""
        put, get = self.urls(self.slot())
        client = HTTPClient(self.http)
        client.send(f"PUT {put} HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\nContent-Length: 10\r\n\r\n"
                    "abc")
        self.service.expire()
        client.send("defghij")
        self.assertEqual(client.responses()[0][0], 201)
        self.assertEqual(self.get(get)[2], b"abcdefghij")

    def test_unknown_and_traversal_paths(self):
        """Unknown tokens, wrong names, `..` and encoded separators are 404 and never leave the folder."""
        secret = os.path.join(self.folder, "secret")
        with open(secret, "w") as file:
            file.write("no")
        put, get = self.urls(self.slot())
        self.put(put, b"x" * 10)
        token = upload.split_path(get)[0]
        for path in (f"/upload/{token}/other.jpg", "/upload/../secret", f"/upload/{token}/..%2F..%2Fsecret",
                     "/upload/..%2F..%2Fsecret/x", f"/upload/{token}%2F..%2F..%2Fsecret/x", "/upload/" + "A" * 30 + "/x"):
            self.assertEqual(self.get(path)[0], 404, path)

    def test_expiry_and_account_deletion(self):
        """Files older than expire_after_days are deleted by the loop; a deleted account's files go too."""
        put, get = self.urls(self.slot())
        self.put(put, b"x" * 10)
        self.harness.clock.advance(86400 * self.harness.config.upload.expire_after_days + upload.EXPIRY_INTERVAL_SECONDS)
        self.assertEqual(self.get(get)[0], 404)
        put, get = self.urls(self.slot())
        self.put(put, b"x" * 10)
        self.harness.server.hosts["localhost"].hooks.fire("account/deleted", "alice@localhost")
        self.assertEqual(self.get(get)[0], 404)
        self.assertEqual(self.service.used("alice@localhost"), 0)


class PureFunctionTests(SynchronousTestCase):
    def test_parse_range(self):
        """One range of bytes, a suffix, an open end; ignored when not understood; 416 past the end."""
        for header, expected in (("bytes=0-0", (0, 0)), ("bytes=5-", (5, 9)), ("bytes=-4", (6, 9)),
                                 ("bytes=-40", (0, 9)), ("bytes=3-100", (3, 9)), ("bytes=10-", "unsatisfiable"),
                                 ("bytes=-0", "unsatisfiable"), ("bytes=4-2", None), ("bytes=0-1,3-4", None),
                                 ("items=0-1", None), ("bytes=a-b", None), ("bytes=-", None), (None, None)):
            self.assertEqual(upload.parse_range(header, 10), expected, header)

    def test_filename_validation(self):
        """Names with separators, control characters or dot names are refused; spaces and accents are fine."""
        for name, valid in (("a b é.png", True), ("", False), (".", False), ("..", False), ("a/b", False),
                            ("a\\b", False), ("a\nb", False), ("x" * 256, False), ("..a", True)):
            self.assertEqual(upload.valid_filename(name), valid, name)

    def test_signature_covers_every_part(self):
        """Changing the path, size, type, expiry or owner changes the signature; so does the key."""
        parts = ("/upload/t/a", 10, "a/b", 100, "alice@localhost")
        reference = upload.signature(b"k", *parts)
        for index, other in enumerate(("/upload/t/b", 11, "a/c", 101, "bob@localhost")):
            changed = list(parts)
            changed[index] = other
            self.assertNotEqual(upload.signature(b"k", *changed), reference)
        self.assertNotEqual(upload.signature(b"j", *parts), reference)


class ConfigTests(SynchronousTestCase):
    def test_bad_options_are_configuration_errors(self):
        """A bad subdomain, a public_url with a path, sizes out of range: errors naming the key."""
        for options, key in (({"subdomain": "a.b"}, "upload.subdomain"), ({"subdomain": "conference"},
                                                                           "upload.subdomain"),
                             ({"public_url": "https://example.org/files"}, "upload.public_url"),
                             ({"max_file_bytes": 0}, "upload.max_file_bytes"),
                             ({"expire_after_days": -1}, "upload.expire_after_days")):
            with self.assertRaises(configuration.ConfigError) as raised:
                configuration.parse({"upload": options}, "test.toml")
            self.assertIn(key, str(raised.exception))
