"""XEP-0313 queries and their answers, the same for a user's archive (``features/mam.py``) and a room's
(``gateways/muc``): the query form and the XEP-0059 page read into an ``ArchiveQuery``, the result
messages and the closing <fin/>, record ids (XEP-0359) and XEP-0082 times.  No I/O."""

import base64
import datetime
import os

from twisted.words.xish import domish

from bridge.core.stanza import NS_DELAY, forwarded_copy, make, parse_jid, result_reply
from bridge.core.storage import ArchiveQuery
from bridge.core.xmlstream import parse_element

NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_DATA = "jabber:x:data"
NS_FORWARD = "urn:xmpp:forward:0"
# The query form: field -> (type, label), in the order disco of the form lists them.
FORM_FIELDS = {
    "with": ("jid-single", "the other party (a bare JID: any of its resources)"),
    "start": ("text-single", "messages at or after this time (XEP-0082)"),
    "end": ("text-single", "messages at or before this time (XEP-0082)"),
    "after-id": ("text-single", "messages after the one with this id"),
    "before-id": ("text-single", "messages before the one with this id"),
    "ids": ("text-multi", "only the messages with these ids"),
}

class QueryError(Exception):
    def __init__(self, condition, text):
        super().__init__(text)
        self.condition = condition
        self.text = text


def stamp(micros):
    """A XEP-0082 UTC time, to the microsecond, of a count of microseconds since the epoch."""
    moment = datetime.datetime.fromtimestamp(micros / 1e6, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_stamp(text):
    """Microseconds since the epoch of a XEP-0082 date and time, which must name its zone."""
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise QueryError("bad-request", f"{text!r} is not a XEP-0082 date and time")
    if moment.tzinfo is None:
        raise QueryError("bad-request", f"{text!r} names no time zone")
    return round(moment.timestamp() * 1e6)


def new_id(micros):
    """A record id: its time in hex, so that the storage's index of ids grows at its end, then 48
    random bits, so that nobody can guess one."""
    return f"{micros:014x}{_RANDOM.text()}"


class RandomTexts:
    """URL-safe texts of 48 random bits from the system's generator, read 1,024 at a time: two are
    needed for every message archived, and a read is a system call."""

    def __init__(self):
        self._texts = []

    def text(self):
        if not self._texts:
            data = base64.urlsafe_b64encode(os.urandom(6 * 1024)).decode("ascii")
            self._texts = [data[start:start + 8] for start in range(0, len(data), 8)]
        return self._texts.pop()


_RANDOM = RandomTexts()


def first_child(element, uri, name):
    for child in element.elements():
        if child.uri == uri and child.name == name:
            return child
    return None


def parse_query(query, config):
    """(ArchiveQuery, flip) of a <query/>; QueryError for what is malformed."""
    form, rsm, flip = None, None, False
    for child in query.elements():
        if (child.uri, child.name) == (NS_DATA, "x"):
            form = child
        elif (child.uri, child.name) == (NS_RSM, "set"):
            rsm = child
        elif (child.uri, child.name) == (NS_MAM, "flip-page"):
            flip = True
    filters = parse_form(form, config) if form is not None else {}
    return ArchiveQuery(**filters, **parse_rsm(rsm, config)), flip


def parse_form(form, config):
    if form.getAttribute("type") not in ("submit", None):
        raise QueryError("bad-request", "the query form must be of type submit")
    filters, seen = {}, set()
    for field in form.elements(NS_DATA, "field"):
        var = field.getAttribute("var")
        values = [str(value).strip() for value in field.elements(NS_DATA, "value")]
        if var is None or var in seen:
            raise QueryError("bad-request", "a field without a name, or named twice")
        seen.add(var)
        if var == "ids":
            if not values or not all(values) or len(values) > config.max_page_size:
                raise QueryError("bad-request", f"ids: between 1 and {config.max_page_size} ids")
            filters["ids"] = tuple(values)
            continue
        if len(values) != 1 or not values[0]:
            raise QueryError("bad-request", f"field {var!r} takes one value")
        value = values[0]
        if var == "FORM_TYPE":
            if value != NS_MAM:
                raise QueryError("bad-request", f"the form type is not {NS_MAM}")
        elif var == "with":
            jid = parse_jid(value)
            if jid is None:
                raise QueryError("bad-request", f"with: {value!r} is not a JID")
            filters["with_jid"] = jid.userhost() if jid.user else jid.host
            if jid.resource is not None:
                filters["with_resource"] = jid.resource
        elif var in ("start", "end"):
            filters[var] = parse_stamp(value)
        elif var in ("after-id", "before-id"):
            filters[var.replace("-", "_")] = value
        elif var == "include-groupchat":
            # XEP-0313 section 4.1.3: the archive holds no groupchat, so either answer is the same.
            if value not in ("true", "false", "1", "0"):
                raise QueryError("bad-request", "include-groupchat takes a boolean")
        else:
            raise QueryError("bad-request", f"unknown field {var!r}")
    return filters


def parse_rsm(rsm, config):
    """The page a XEP-0059 <set/> asks for; a <max/> over the server's maximum is cut to it."""
    page = {"limit": config.default_page_size}
    if rsm is None:
        return page
    for child in rsm.elements():
        text = str(child).strip()
        if child.name == "max":
            if not (text.isascii() and text.isdigit()):
                raise QueryError("bad-request", "<max/> must be a non-negative integer")
            page["limit"] = min(int(text), config.max_page_size)
        elif child.name == "after":
            if not text:
                raise QueryError("bad-request", "<after/> must name an id")
            page["page_after"] = text
        elif child.name == "before":
            if text:
                page["page_before"] = text
            else:
                page["last_page"] = True
        elif child.name == "index":
            raise QueryError("feature-not-implemented", "paging by <index/> is not supported; use <after/>")
    if "page_after" in page and ("page_before" in page or "last_page" in page):
        raise QueryError("bad-request", "<after/> and <before/> together")
    return page


def fin_reply(iq, page, records):
    """The result of a query whose ``records`` (of ``page``, in the order sent) were sent: <fin/> with its RSM <set/>."""
    reply = result_reply(iq)
    fin = reply.addElement((NS_MAM, "fin"))
    if page.complete:
        fin["complete"] = "true"
    rsm = fin.addElement((NS_RSM, "set"))
    if records:
        # No <first index/> (XEP-0059 leaves it optional): it costs a count per page, and
        # clients (slixmpp) read it as a forward position and stop paging backwards early.
        rsm.addElement("first", content=records[0].id)
        rsm.addElement("last", content=records[-1].id)
    rsm.addElement("count", content=str(page.count))
    return reply


def result_message(to, account, queryid, record):
    """One archived message as a query result: <result/> wrapping <forwarded/> with its <delay/>.

    Built without domish's parent links, as carbons' copies are, so that it
    leaves no reference cycle once sent.
    """
    message = make("message", to=to, sender=account)
    result = domish.Element((NS_MAM, "result"))
    result["id"] = record.id
    if queryid is not None:
        result["queryid"] = queryid
    forwarded = domish.Element((NS_FORWARD, "forwarded"))
    delay = domish.Element((NS_DELAY, "delay"))
    delay["stamp"] = stamp(record.timestamp)
    message.children.append(result)
    result.children.append(forwarded)
    forwarded.children.extend((delay, forwarded_copy(parse_element(record.stanza))))
    return message
