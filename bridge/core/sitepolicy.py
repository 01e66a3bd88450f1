"""Site policies: what a host's users may see and do beyond the protocols' own rules.

The planning guide's questions, answered per ``[hosts.NAME]``
(docs/operations.md, "Site policies"):

* who sees whose presence: ``presence_access`` "roster" (RFC 6121's
  subscriptions only), "domain" (every user of the host sees every other's
  presence without a subscription) or "everyone" (any user anywhere);
* who may send alerts (headline messages) and announcements: ``alerts``
  "everyone", "listed" (``alert_senders`` and the admins) or "admins";
* how much private XML and vCard a user may keep: ``max_private_bytes_per_user``
  and ``max_vcard_bytes`` (-1: ``[quotas]``, 0: none at all);
* who administers the host: ``admins``, who are also the MUC service's
  administrators for the host's users (``[muc] creation``, docs/muc.md).

Pure functions of the host's configuration, read at the time of each
decision so that a reload applies at once.
"""


def _bare(jid):
    """A bare JID string, lower case, of a JID object or text."""
    text = jid if isinstance(jid, str) else jid.userhost()
    return text.split("/", 1)[0].lower()


def is_admin(host_config, jid):
    """True when ``jid``'s account is one of the host's ``admins``."""
    bare = _bare(jid)
    return any(bare == admin.lower() for admin in host_config.admins)


def sees_presence(host_config, host, watcher):
    """True when ``watcher`` (a JID) may see the presence of a user of ``host`` without a subscription.

    Only accounts watch: a server or a service (no local part) never does.
    """
    bare = _bare(watcher)
    if "@" not in bare:
        return False
    if host_config.presence_access == "everyone":
        return True
    return host_config.presence_access == "domain" and bare.split("@", 1)[1] == host.lower()


def may_send_alerts(host_config, sender):
    """True when ``sender`` (a user of the host) may send alerts and announcements to the host's users."""
    if host_config.alerts == "everyone" or is_admin(host_config, sender):
        return True
    bare = _bare(sender)
    return host_config.alerts == "listed" and any(bare == listed.lower() for listed in host_config.alert_senders)


def storage_bound(host_bound, quota_bound):
    """The bytes a user of the host may keep: the host's own bound, or ``[quotas]``'s when it is -1 (0: none)."""
    return quota_bound if host_bound < 0 else host_bound
