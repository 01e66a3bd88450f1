"""The parts of publish-subscribe (XEP-0060) that PEP and a small pubsub service share, without I/O.

A service keeps nodes; a node is a name, a configuration and its items,
oldest first, each an id, the payload's XML and its publisher.  This module
holds what does not depend on where the nodes live: node configuration and
its data forms (including XEP-0223 publish-options, which are preconditions
on an existing node), the access models, the bounds on items, and the
error replies with XEP-0060's application-specific conditions.  PEP
(``bridge.features.pep``) stores the nodes of one account in one document;
a service on ``pubsub.<host>`` would store them its own way and reuse all
of this.
"""

import os

from twisted.words.xish import domish

from bridge.core.stanza import error_reply, make
from bridge.core.xmlstream import parse_element, serialize

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_OWNER = NS_PUBSUB + "#owner"
NS_EVENT = NS_PUBSUB + "#event"
NS_ERRORS = NS_PUBSUB + "#errors"
NS_DATA = "jabber:x:data"
FORM_NODE_CONFIG = NS_PUBSUB + "#node_config"
FORM_PUBLISH_OPTIONS = NS_PUBSUB + "#publish-options"

ACCESS_MODELS = ("presence", "open", "roster", "whitelist")
PUBLISH_MODELS = ("publishers", "subscribers", "open")
SEND_LAST = ("never", "on_sub", "on_sub_and_presence")
MAX_TITLE_CHARS = 256


def default_config(max_items):
    """A new node's configuration (XEP-0163: presence access, the last item sent on presence)."""
    return {"persist_items": True, "max_items": max_items, "access_model": "presence",
            "roster_groups_allowed": [], "send_last_published_item": "on_sub_and_presence"}


class PubsubError(Exception):
    """A request refused: the stanza error condition and the pubsub#errors condition, if any."""

    def __init__(self, condition, app_condition=None, text=None):
        super().__init__(text or condition)
        self.condition = condition
        self.app_condition = app_condition
        self.text = text

    def reply(self, stanza):
        extra = domish.Element((NS_ERRORS, self.app_condition)) if self.app_condition else None
        return error_reply(stanza, self.condition, self.text, extra)


def _boolean(values):
    if len(values) == 1 and values[0] in ("1", "true"):
        return True
    if len(values) == 1 and values[0] in ("0", "false"):
        return False
    raise PubsubError("not-acceptable", text="a boolean is 1, true, 0 or false")


def _max_items(values, limit):
    """``pubsub#max_items``: a number, or "max" (XEP-0060 1.15.x) for the service's most."""
    if len(values) == 1 and values[0] == "max":
        return limit
    try:
        number = int(values[0]) if len(values) == 1 else None
    except ValueError:
        number = None
    if number is None or number < 1:
        raise PubsubError("not-acceptable", text="pubsub#max_items is a positive number or max")
    if number > limit:
        raise PubsubError("not-acceptable", "max-items-exceeded", f"a node keeps at most {limit} items")
    return number


def _title(values):
    if len(values) > 1 or (values and len(values[0]) > MAX_TITLE_CHARS):
        raise PubsubError("not-acceptable", text=f"pubsub#title is one text of at most {MAX_TITLE_CHARS} characters")
    return values[0] if values else ""


def _choice(values, choices, name):
    if len(values) != 1 or values[0] not in choices:
        condition = "unsupported-access-model" if name == "access_model" else None
        raise PubsubError("not-acceptable", condition, f"pubsub#{name} is one of {', '.join(choices)}")
    return values[0]


def options_from_form(fields, max_items_limit, service=False):
    """The configuration values a form names (other fields are ignored), checked; PubsubError if one is bad.

    ``service``: a pubsub service's node, which also has a publish model and a title (PEP's have neither).
    """
    options = {}
    for var, values in fields.items():
        name = var.removeprefix("pubsub#")
        if name in ("publish_model", "title") and not service:
            continue
        if name == "persist_items":
            options[name] = _boolean(values)
        elif name == "max_items":
            options[name] = _max_items(values, max_items_limit)
        elif name == "access_model":
            options[name] = _choice(values, ACCESS_MODELS, name)
        elif name == "send_last_published_item":
            options[name] = _choice(values, SEND_LAST, name)
        elif name == "roster_groups_allowed":
            options[name] = sorted(set(values))
        elif name == "publish_model":
            options[name] = _choice(values, PUBLISH_MODELS, name)
        elif name == "title":
            options[name] = _title(values)
    return options


def check_preconditions(config, options):
    """XEP-0223: publish-options that an existing node's configuration contradicts are refused."""
    for name, value in options.items():
        if config.get(name) != value:
            raise PubsubError("conflict", "precondition-not-met", f"the node's pubsub#{name} differs")


def config_form(config):
    """The pubsub#node_config form (type "form") showing ``config``."""
    form = domish.Element((NS_DATA, "x"))
    form["type"] = "form"

    def field(var, kind, values, options=()):
        element = form.addElement("field")
        element["var"], element["type"] = var, kind
        for option in options:
            element.addElement("option").addElement("value", content=option)
        for value in values:
            element.addElement("value", content=value)

    field("FORM_TYPE", "hidden", [FORM_NODE_CONFIG])
    field("pubsub#persist_items", "boolean", ["1" if config["persist_items"] else "0"])
    field("pubsub#max_items", "text-single", [str(config["max_items"])])
    field("pubsub#access_model", "list-single", [config["access_model"]], ACCESS_MODELS)
    field("pubsub#roster_groups_allowed", "list-multi", config["roster_groups_allowed"])
    field("pubsub#send_last_published_item", "list-single", [config["send_last_published_item"]], SEND_LAST)
    # The fields of a pubsub service's nodes (PEP has neither).
    if "publish_model" in config:
        field("pubsub#publish_model", "list-single", [config["publish_model"]], PUBLISH_MODELS)
    if "title" in config:
        field("pubsub#title", "text-single", [config["title"]])
    return form


def access_error(config, is_owner, roster_item):
    """Why a requester may not see a node's items, or None when it may.

    ``roster_item``: the owner's roster item of the requester's bare JID
    (None when it has none).  XEP-0060 section 6.1.3 names the conditions.
    """
    model = config["access_model"]
    if is_owner or model == "open":
        return None
    if model == "whitelist":
        return PubsubError("not-allowed", "closed-node")
    subscribed = roster_item is not None and roster_item.has_from
    if model == "presence":
        return None if subscribed else PubsubError("not-authorized", "presence-subscription-required")
    allowed = set(config["roster_groups_allowed"])
    if subscribed and allowed.intersection(roster_item.groups):
        return None
    return PubsubError("not-authorized", "not-in-roster-group")


def published_item(publish, max_item_bytes):
    """(item id, payload text) of a <publish/>: one item, with one payload of at most ``max_item_bytes``
    (the id made up when the publisher gave none); PubsubError otherwise."""
    items = list(publish.elements(NS_PUBSUB, "item"))
    if len(items) != 1:
        raise PubsubError("bad-request", "item-required", "a publish carries one item")
    payloads = list(items[0].elements())
    if len(payloads) != 1:
        raise PubsubError("bad-request", "invalid-payload" if payloads else "payload-required",
                          "an item carries one payload")
    payload_xml = serialize(payloads[0])
    if len(payload_xml.encode("utf-8")) > max_item_bytes:
        raise PubsubError("not-acceptable", "payload-too-big", f"an item may take at most {max_item_bytes} bytes")
    return items[0].getAttribute("id") or os.urandom(8).hex(), payload_xml


def publish_item(items, item_id, payload_xml, publisher, max_items):
    """Add or replace an item (the newest afterwards) in a node's list; the items pushed out, oldest first."""
    items[:] = [item for item in items if item[0] != item_id]
    items.append([item_id, payload_xml, publisher])
    excess = len(items) - max_items
    if excess <= 0:
        return []
    removed, items[:] = items[:excess], items[excess:]
    return removed


def item_bytes(items):
    """The bytes a node's items take (their payloads' XML, UTF-8)."""
    return sum(len(item[1].encode("utf-8")) for item in items)


def event_message(sender, to, *children):
    """A notification: <message type='headline'> with a pubsub#event <items/> (or delete, purge) element."""
    message = make("message", to=to, sender=sender, type="headline")
    event = message.addElement((NS_EVENT, "event"))
    for child in children:
        event.addChild(child)
    return message


def items_element(uri, node, items):
    """<items node=.../> in ``uri`` holding ``items`` ([id, payload XML, publisher])."""
    element = domish.Element((uri, "items"))
    element["node"] = node
    for item_id, payload_xml, _publisher in items:
        item = element.addElement("item")
        item["id"] = item_id
        item.addChild(parse_element(payload_xml))
    return element
