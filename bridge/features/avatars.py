"""Avatars kept in the vCard (XEP-0153) and in PEP (XEP-0084) alike, as XEP-0398 describes.

Older clients and group chats read the photo of the vCard and its hash in
presence; newer clients publish and read the ``urn:xmpp:avatar:data`` and
``urn:xmpp:avatar:metadata`` nodes.  A client's new vCard photo is
published to both nodes (the data first, as XEP-0084 section 4.2 asks), a
vCard without a photo as an empty metadata item; a client's publish of
metadata puts the image of its data item into the vCard, whose hash the
owner's presence then carries again.  The vCard and PEP features each keep
their own store: this module only listens to one and writes to the other
(``bridge.core.account_data``), and what it writes is not told back.
"""

import base64
import binascii
import hashlib
import re

from twisted.internet import defer
from twisted.logger import Logger
from twisted.words.xish import domish

from bridge.core import account_data
from bridge.core.xmlstream import parse_element

log = Logger()

NS_CONVERSION = "urn:xmpp:pep-vcard-conversion:0"
NS_DATA = "urn:xmpp:avatar:data"
NS_METADATA = "urn:xmpp:avatar:metadata"
NS_VCARD = "vcard-temp"
DEFAULT_TYPE = "image/png"
IMAGE_TYPE = re.compile(r"^image/[A-Za-z0-9.+-]{1,64}$")
NO_AVATAR_ID = "none"


def vcard_photo(vcard):
    """(type, bytes) of a vCard's photo, or None when it has none (or its BINVAL is not base64)."""
    for photo in vcard.elements(NS_VCARD, "PHOTO"):
        kind = next((str(element).strip() for element in photo.elements(NS_VCARD, "TYPE")), "")
        for binval in photo.elements(NS_VCARD, "BINVAL"):
            try:
                data = base64.b64decode("".join(str(binval).split()), validate=True)
            except binascii.Error:
                return None
            return (kind if IMAGE_TYPE.match(kind) else DEFAULT_TYPE), data
    return None


def pep_items(photo):
    """The data and metadata items (each [(id, payload)]) that announce ``photo`` ((type, bytes) or None)."""
    metadata = domish.Element((NS_METADATA, "metadata"))
    if photo is None:
        return [], [(NO_AVATAR_ID, metadata)]
    kind, data = photo
    digest = hashlib.sha1(data).hexdigest()
    info = metadata.addElement("info")
    info["id"], info["bytes"], info["type"] = digest, str(len(data)), kind
    payload = domish.Element((NS_DATA, "data"))
    payload.addContent(base64.b64encode(data).decode("ascii"))
    return [(digest, payload)], [(digest, metadata)]


def published_photo(metadata_xml, data_items):
    """What a published metadata item asks the vCard to show: (type, bytes), None for no avatar, or
    False when the image is not among ``data_items`` ([id, payload XML]) as its id says."""
    infos = list(parse_element(metadata_xml).elements(NS_METADATA, "info"))
    if not infos:
        return None
    stored = dict(data_items)
    for info in infos:
        digest = info.getAttribute("id")
        if digest not in stored:
            continue  # an image only at a URL (XEP-0084 section 4.2.1), or not published yet
        try:
            data = base64.b64decode("".join(str(parse_element(stored[digest])).split()), validate=True)
        except binascii.Error:
            continue
        kind = info.getAttribute("type") or DEFAULT_TYPE
        if hashlib.sha1(data).hexdigest() == digest and IMAGE_TYPE.match(kind):
            return kind, data
    return False


class AvatarConversion:
    def __init__(self, ctx):
        self.ctx = ctx

    def vcard_changed(self, change):
        """``vcard/changed``: a new photo (or none, where one was) goes to PEP."""
        photo = vcard_photo(change.value)
        digest = hashlib.sha1(photo[1]).hexdigest() if photo is not None else ""
        if digest == (change.previous or ""):
            return False
        data_items, metadata_items = pep_items(photo)
        d = account_data.ask(self.ctx, "pep/write", change.owner, NS_DATA, data_items) if data_items \
            else defer.succeed(None)
        if d is not None:
            d.addCallback(lambda _: account_data.ask(self.ctx, "pep/write", change.owner, NS_METADATA,
                                                       metadata_items))
            change.wait_for(d, "avatar")
        return False

    def pep_changed(self, change):
        """``pep/changed``: a client's metadata publish puts its image in the vCard."""
        if change.name != NS_METADATA:
            return False
        photo = published_photo(change.value[-1][1], change.read(NS_DATA)) if change.value else None
        if photo is not False:
            change.wait_for(account_data.ask(self.ctx, "vcard/write", change.owner, "vCard", photo), "avatar")
        return False


def setup(ctx):
    if not ctx.has_accounts:
        return None
    conversion = AvatarConversion(ctx)
    ctx.add_feature(NS_CONVERSION, where="account")
    ctx.hook("vcard/changed", conversion.vcard_changed)
    ctx.hook("pep/changed", conversion.pep_changed)
    return conversion
