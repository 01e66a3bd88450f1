"""A room's configuration and its XEP-0004 form (muc#roomconfig), read and written with no I/O.

An owner submits the form; every value is checked against the service's
bounds, and a form with a value out of range is refused whole
(``FormError``, answered not-acceptable), so that a room never holds a
setting the service would not have chosen.
"""

import dataclasses

from twisted.words.xish import domish

from bridge.core.stanza import NS_DATA, form_values

NS_ROOMCONFIG = "http://jabber.org/protocol/muc#roomconfig"
NS_ROOMINFO = "http://jabber.org/protocol/muc#roominfo"
NS_REQUEST = "http://jabber.org/protocol/muc#request"
NS_REGISTER = "http://jabber.org/protocol/muc#register"
MAX_TEXT_BYTES = 1024  # a room's name, description or password
WHOIS = ("moderators", "anyone")
ALLOW_PM = ("anyone", "participants", "moderators", "none")


class FormError(ValueError):
    """A submitted configuration the service refuses; the message names the field."""


@dataclasses.dataclass
class RoomConfig:
    name: str = ""
    description: str = ""
    persistent: bool = False
    public: bool = True
    members_only: bool = False
    moderated: bool = False
    password: str = ""
    max_users: int = 0
    whois: str = "moderators"
    change_subject: bool = False
    history_length: int = 0
    allow_invites: bool = False
    allow_pm: str = "anyone"

    def to_document(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_document(cls, document):
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in document.items() if key in known})


# form var -> (attribute, kind, choices)
FIELDS = {
    "muc#roomconfig_roomname": ("name", "text-single", None),
    "muc#roomconfig_roomdesc": ("description", "text-single", None),
    "muc#roomconfig_persistentroom": ("persistent", "boolean", None),
    "muc#roomconfig_publicroom": ("public", "boolean", None),
    "muc#roomconfig_membersonly": ("members_only", "boolean", None),
    "muc#roomconfig_moderatedroom": ("moderated", "boolean", None),
    "muc#roomconfig_passwordprotectedroom": (None, "boolean", None),
    "muc#roomconfig_roomsecret": ("password", "text-private", None),
    "muc#roomconfig_maxusers": ("max_users", "text-single", None),
    "muc#roomconfig_whois": ("whois", "list-single", WHOIS),
    "muc#roomconfig_changesubject": ("change_subject", "boolean", None),
    "muc#roomconfig_historylength": ("history_length", "text-single", None),
    "muc#roomconfig_allowinvites": ("allow_invites", "boolean", None),
    "muc#roomconfig_allowpm": ("allow_pm", "list-single", ALLOW_PM),
}


def _field(form, var, kind, values, label=None, choices=None):
    field = form.addElement("field")
    field["var"], field["type"] = var, kind
    if label:
        field["label"] = label
    for choice in choices or ():
        option = field.addElement("option")
        option.addElement("value", content=choice)
    for value in values:
        field.addElement("value", content=value)
    return field


def config_form(config, max_users_cap, max_history_length):
    """The muc#roomconfig form of ``config``, as an owner is sent it (type form)."""
    form = domish.Element((NS_DATA, "x"))
    form["type"] = "form"
    form.addElement("title", content="Room configuration")
    _field(form, "FORM_TYPE", "hidden", [NS_ROOMCONFIG])
    for var, (attribute, kind, choices) in FIELDS.items():
        if attribute is None:
            value = "1" if config.password else "0"
        else:
            value = getattr(config, attribute)
            value = ("1" if value else "0") if kind == "boolean" else str(value)
        label = None
        if var == "muc#roomconfig_maxusers":
            label = f"Maximum occupants (1 to {max_users_cap})"
        elif var == "muc#roomconfig_historylength":
            label = f"Messages kept for newcomers (0 to {max_history_length})"
        _field(form, var, kind, [value], label, choices)
    return form


def _boolean(var, text):
    if text in ("1", "true"):
        return True
    if text in ("0", "false"):
        return False
    raise FormError(f"{var} must be a boolean")


def _integer(var, text, low, high):
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise FormError(f"{var} must be a whole number from {low} to {high}")
    return int(text)


def apply_form(config, form, max_users_cap, max_history_length):
    """A new RoomConfig: ``config`` changed by the submitted ``form``; raises FormError."""
    values = form_values(form)
    form_type = values.get("FORM_TYPE")
    if form_type is not None and form_type != [NS_ROOMCONFIG]:
        raise FormError("FORM_TYPE must be " + NS_ROOMCONFIG)
    changed = dataclasses.replace(config)
    protected = None
    for var, given in values.items():
        if var not in FIELDS:
            continue
        attribute, kind, choices = FIELDS[var]
        if len(given) != 1:
            raise FormError(f"{var} takes one value")
        text = given[0].strip() if kind != "text-private" else given[0]
        if kind == "boolean":
            value = _boolean(var, text)
        elif var == "muc#roomconfig_maxusers":
            value = _integer(var, text, 1, max_users_cap)
        elif var == "muc#roomconfig_historylength":
            value = _integer(var, text, 0, max_history_length)
        elif choices is not None:
            if text not in choices:
                raise FormError(f"{var} must be one of {', '.join(choices)}")
            value = text
        else:
            if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
                raise FormError(f"{var} is longer than {MAX_TEXT_BYTES} bytes")
            value = text
        if attribute is None:
            protected = value
        else:
            setattr(changed, attribute, value)
    if protected is False:
        changed.password = ""
    elif protected and not changed.password:
        raise FormError("a password-protected room needs muc#roomconfig_roomsecret")
    return changed


def form_type(form):
    """The FORM_TYPE of a data form, or None."""
    values = form_values(form).get("FORM_TYPE")
    return values[0] if values else None


def voice_request_form(nick, jid):
    """The muc#request form a visitor's voice request reaches the moderators in (XEP-0045 section 8.6)."""
    form = domish.Element((NS_DATA, "x"))
    form["type"] = "form"
    form.addElement("title", content="Voice request")
    _field(form, "FORM_TYPE", "hidden", [NS_REQUEST])
    _field(form, "muc#role", "list-single", ["participant"], "Requested role")
    _field(form, "muc#jid", "jid-single", [jid], "User ID")
    _field(form, "muc#roomnick", "text-single", [nick], "Room nickname")
    _field(form, "muc#request_allow", "boolean", ["false"], "Grant voice to this person?")
    return form


def voice_decision(form):
    """(nick, allowed) of a moderator's answer to a voice request, or None when ``form`` is the request
    itself; ``FormError`` when it is neither."""
    values = form_values(form)
    if "muc#request_allow" not in values:
        return None
    nick, allow = values.get("muc#roomnick", []), values["muc#request_allow"]
    if len(nick) != 1 or len(allow) != 1:
        raise FormError("an answer to a voice request names one nickname and one decision")
    return nick[0], _boolean("muc#request_allow", allow[0])


def register_form():
    """The muc#register form a user fills in to reserve a nickname in a room (XEP-0045 section 7.10)."""
    form = domish.Element((NS_DATA, "x"))
    form["type"] = "form"
    form.addElement("title", content="Nickname registration")
    form.addElement("instructions", content="Choose the nickname that is kept for you in this room.")
    _field(form, "FORM_TYPE", "hidden", [NS_REGISTER])
    _field(form, "muc#register_roomnick", "text-single", [], "Nickname").addElement("required")
    return form


def registered_nick(form):
    """The nickname of a submitted muc#register form; ``FormError`` when it has none or another type."""
    values = form_values(form)
    if values.get("FORM_TYPE", [NS_REGISTER]) != [NS_REGISTER]:
        raise FormError("FORM_TYPE must be " + NS_REGISTER)
    nick = values.get("muc#register_roomnick", [])
    if len(nick) != 1 or not nick[0].strip():
        raise FormError("muc#register_roomnick takes one nickname")
    return nick[0].strip()


def room_info_form(config, occupants):
    """The muc#roominfo form of disco#info on a room."""
    form = domish.Element((NS_DATA, "x"))
    form["type"] = "result"
    _field(form, "FORM_TYPE", "hidden", [NS_ROOMINFO])
    _field(form, "muc#roominfo_description", "text-single", [config.description])
    _field(form, "muc#roominfo_occupants", "text-single", [str(occupants)])
    _field(form, "muc#roomconfig_roomname", "text-single", [config.name])
    return form
