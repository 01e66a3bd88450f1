"""HTTP File Upload (XEP-0363) against the real server: a slixmpp client asks upload.localhost for a slot
(by hand: slixmpp's xep_0363 plugin needs aiohttp), then the standard library's HTTP client PUTs and GETs
over the HTTPS listener (self-signed certificate: no verification)."""

import asyncio
import http.client
import os
import ssl
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

import pytest

from .harness import Clients

NS = "urn:xmpp:http:upload:0"
SERVICE = "upload.localhost"
USERS = ("uma@localhost",)


@pytest.fixture(scope="module")
def upload_server(start_server):
    return start_server("upload", USERS, tables="[upload]\nmax_file_bytes = 1048576\n",
                        wait_for=("c2s", "c2s-direct-tls", "https"))


def request(method, url, body=None, headers=None):
    """(status, {lowercase header: value}, body) of one HTTPS request to the loopback listener."""
    parts = urlsplit(url)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection("127.0.0.1", parts.port, context=context, timeout=10)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, target, body=body, headers={"Host": parts.netloc, **(headers or {})})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


async def slot(client, size, filename="report.pdf", content_type="application/pdf"):
    reply = await client.query("get", SERVICE, f"<request xmlns='{NS}' filename='{filename}' size='{size}' "
                                               f"content-type='{content_type}'/>")
    found = reply.xml.find(f"{{{NS}}}slot")
    assert found is not None, reply
    return found.find(f"{{{NS}}}put").get("url"), found.find(f"{{{NS}}}get").get("url")


def test_upload_download_range_and_refusals(upload_server):
    """disco shows the service with its max-file-size; a 300 KB file goes up through the slot and comes back
    equal with its type; a Range GET gets 206 and the bytes asked for; a wrong signature is 403; a body larger
    than announced is 413; a slot over max_file_bytes is file-too-large."""
    content = os.urandom(300 * 1024)

    async def scenario():
        async with Clients(upload_server) as clients:
            uma = await clients.login("uma@localhost/a")
            info = await uma.query("get", SERVICE, "<query xmlns='http://jabber.org/protocol/disco#info'/>")
            assert NS in ET.tostring(info.xml, encoding="unicode")
            assert "max-file-size" in ET.tostring(info.xml, encoding="unicode")
            put, get = await slot(uma, len(content))
            signed = await slot(uma, 100)
            bigger = await slot(uma, 100)
            refused = await uma.query("get", SERVICE, f"<request xmlns='{NS}' filename='big' size='2000000'/>")
            return put, get, signed, bigger, refused

    put, get, signed, bigger, refused = asyncio.run(scenario())
    assert refused.xml.find(f".//{{{NS}}}file-too-large") is not None
    status, _, _ = request("PUT", put, content, {"Content-Type": "application/pdf"})
    assert status == 201
    status, headers, body = request("GET", get)
    assert (status, headers["content-type"], int(headers["content-length"])) == (200, "application/pdf",
                                                                                 len(content))
    assert body == content
    status, headers, body = request("GET", get, headers={"Range": "bytes=1000-1999"})
    assert (status, headers["content-range"], body) == (206, f"bytes 1000-1999/{len(content)}", content[1000:2000])
    wrong = signed[0][:-4] + ("0000" if not signed[0].endswith("0000") else "1111")
    assert request("PUT", wrong, b"x" * 100, {"Content-Type": "application/pdf"})[0] == 403
    assert request("PUT", bigger[0], b"x" * 101, {"Content-Type": "application/pdf"})[0] == 413
    assert request("GET", bigger[1])[0] == 404
