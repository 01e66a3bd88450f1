"""Configuration: a TOML file (or nothing) becomes frozen dataclasses.

The file is read once, by ``load``; every component receives the section it
needs through its constructor.  Every key has a default, so no file at all
gives a working server.  Unknown keys, wrong types and values out of range are
errors that name the file and the key path, and all of them are reported at
once so an administrator fixes a file in one pass.
"""

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field

from bridge.core import sitepolicy
from bridge.core.directory import parse_uri as parse_ldap_uri
from bridge.core.loglevels import LEVELS as LOG_LEVELS, SUBSYSTEMS as LOG_SUBSYSTEMS, namespaces_of as namespaces_of_log
from bridge.core.stanza import parse_jid

TLS_VERSIONS = ("1.2", "1.3")
RESOURCE_CONFLICT_POLICIES = ("replace", "refuse", "rename")
SIP_DIGEST_ALGORITHMS = ("SHA-256", "MD5")
PRESENCE_ACCESS = ("roster", "domain", "everyone")
ALERT_SENDERS = ("admins", "listed", "everyone")
MIN_API_TOKEN_CHARS = 32
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS"


class ConfigError(Exception):
    """A configuration that cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def read_first_line(path):
    """A secret kept in a file: its first line, without the line end."""
    with open(path, encoding="utf-8") as handle:
        return handle.readline().rstrip("\r\n")


def normalise_domain(name):
    """A domain name as JIDs compare it: lower case, without a trailing dot (RFC 7622 section 3.2)."""
    return name.strip().lower().rstrip(".")


def _option(default, *, low=None, high=None, choices=None, path=False, domains=False, endpoints=False):
    """A dataclass field whose metadata carries the checks made at load time.

    ``path``: a file name, resolved against the configuration file's folder.
    ``domains``: a list of domain names, or a table keyed by them, kept normalised.
    ``endpoints``: a list of listening endpoints (``check_listening_endpoint``).
    """
    metadata = {"low": low, "high": high, "choices": choices, "path": path, "domains": domains,
                "endpoints": endpoints}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TLSConfig:
    """The certificate shared by every listener unless a listener names its own, and the certificates
    chosen by SNI (``certificates_dir``, Let's Encrypt's layout: ``<name>/fullchain.pem``, ``privkey.pem``)."""

    certificate: str = _option("", path=True)
    private_key: str = _option("", path=True)
    certificates_dir: str = _option("", path=True)


@dataclass(frozen=True)
class ListenerTLS:
    """The TLS policy a kind of listener has for itself: versions, ciphers, certificate.

    Each listener kind keeps its own, so that tightening one (the XMPP
    clients) never breaks another (a SIP registrar, a federation peer).
    """

    tls_min_version: str = _option("1.2", choices=TLS_VERSIONS)
    tls_ciphers: str = _option(DEFAULT_CIPHERS)
    certificate: str = _option("", path=True)
    private_key: str = _option("", path=True)


@dataclass(frozen=True)
class C2SConfig(ListenerTLS):
    """Client-to-server listeners and the limits applied to each connection."""

    endpoints: list = _option(["tcp:5222"], endpoints=True)
    direct_tls_endpoints: list = _option(["tcp:5223"], endpoints=True)
    require_encryption: bool = _option(True)
    stanza_size_limit_bytes: int = _option(262144, low=1024, high=64 * 1024 * 1024)
    rate_limit_bytes_per_second: int = _option(20000, low=100)
    rate_limit_burst_bytes: int = _option(200000, low=1024)
    pre_auth_timeout_seconds: float = _option(30.0, low=1, high=3600)
    ping_interval_seconds: float = _option(300.0, low=0, high=86400)
    ping_timeout_seconds: float = _option(60.0, low=1, high=3600)
    max_sessions_per_user: int = _option(10, low=1)
    max_connections_per_address: int = _option(20, low=1)
    resource_conflict: str = _option("replace", choices=RESOURCE_CONFLICT_POLICIES)
    resumption_timeout_seconds: float = _option(600.0, low=0, high=86400)
    resumption_max_queue: int = _option(500, low=1)
    csi_max_held_stanzas: int = _option(256, low=1, high=100000)
    csi_max_held_bytes: int = _option(131072, low=1024, high=64 * 1024 * 1024)
    max_buffered_bytes: int = _option(1048576, low=1024)
    unauthenticated_share: float = _option(0.1, low=0.01, high=1.0)
    proxy_protocol_trusted_proxies: list = _option([])


@dataclass(frozen=True)
class S2SConfig(ListenerTLS):
    """Server-to-server listeners, and the policy for every link to another server."""

    endpoints: list = _option(["tcp:5269"], endpoints=True)
    direct_tls_endpoints: list = _option([], endpoints=True)
    require_encryption: bool = _option(True)
    certificate_authentication: bool = _option(True)
    dialback: bool = _option(True)
    ca_file: str = _option("", path=True)
    allowed_domains: list = _option([], domains=True)
    denied_domains: list = _option([], domains=True)
    dialback_fallback_domains: list = _option([], domains=True)
    static_routes: dict = _option({}, domains=True)
    dns_server: str = _option("")
    stanza_size_limit_bytes: int = _option(524288, low=1024, high=64 * 1024 * 1024)
    rate_limit_bytes_per_second: int = _option(1000000, low=100)
    rate_limit_burst_bytes: int = _option(2000000, low=1024)
    connect_timeout_seconds: float = _option(20.0, low=1, high=600)
    idle_timeout_seconds: float = _option(600.0, low=10, high=86400)
    max_queued_stanzas: int = _option(10000, low=1)
    max_buffered_bytes: int = _option(4194304, low=1024)
    pre_auth_timeout_seconds: float = _option(60.0, low=1, high=3600)
    max_connections_per_address: int = _option(20, low=1)
    dialback_max_pending_per_stream: int = _option(5, low=1, high=1000)
    dialback_max_pending: int = _option(100, low=1, high=100000)
    proxy_protocol_trusted_proxies: list = _option([])


@dataclass(frozen=True)
class HTTPConfig(ListenerTLS):
    """The HTTP listener of browser clients: BOSH, WebSocket and the web chat page."""

    endpoints: list = _option(["tcp:5280"], endpoints=True)
    tls_endpoints: list = _option(["tcp:5281"], endpoints=True)
    bosh_path: str = _option("/http-bind")
    websocket_path: str = _option("/xmpp-websocket")
    allowed_origins: list = _option([])
    cors_allowed_headers: list = _option(["Content-Type", "Authorization"])
    cors_allow_credentials: bool = _option(False)
    max_request_bytes: int = _option(262144, low=1024, high=64 * 1024 * 1024)
    header_timeout_seconds: float = _option(10.0, low=1, high=600)
    bosh_max_wait_seconds: float = _option(60.0, low=1, high=3600)
    bosh_max_hold: int = _option(1, low=0, high=10)
    bosh_max_requests: int = _option(2, low=1, high=10)
    bosh_max_inactivity_seconds: float = _option(60.0, low=5, high=3600)
    bosh_max_pause_seconds: float = _option(120.0, low=0, high=3600)
    bosh_polling_seconds: float = _option(2.0, low=0, high=60)
    bosh_max_sessions_per_address: int = _option(20, low=1)
    bosh_max_sessions: int = _option(10000, low=1)
    bosh_sessionless_requests_per_second_per_address: float = _option(2.0, low=0.01, high=100000)
    bosh_sessionless_requests_burst: int = _option(20, low=1, high=100000)
    websocket_ping_interval_seconds: float = _option(60.0, low=0, high=3600)
    websocket_max_message_bytes: int = _option(262144, low=1024, high=64 * 1024 * 1024)
    websocket_see_other_uri: str = _option("")
    max_buffered_bytes: int = _option(1048576, low=1024)
    web_client_dir: str = _option("web/node_modules/converse.js/dist", path=True)
    trusted_proxies: list = _option([])
    trusted_proxy_header: str = _option("x-forwarded-for", choices=("x-forwarded-for", "forwarded"))
    proxy_protocol_trusted_proxies: list = _option([])


@dataclass(frozen=True)
class ComponentListenerConfig:
    """The XEP-0114 listener that external components connect to."""

    endpoints: list = _option(["tcp:5347:interface=127.0.0.1"], endpoints=True)
    stanza_size_limit_bytes: int = _option(1048576, low=1024, high=64 * 1024 * 1024)
    rate_limit_bytes_per_second: int = _option(10000000, low=100)
    rate_limit_burst_bytes: int = _option(20000000, low=1024)
    max_buffered_bytes: int = _option(4194304, low=1024)


@dataclass(frozen=True)
class ComponentConfig:
    """One external component: the domain it serves and its shared secret."""

    secret: str = _option("")
    secret_file: str = _option("", path=True)

    def read_secret(self):
        return read_first_line(self.secret_file) if self.secret_file else self.secret


@dataclass(frozen=True)
class HostConfig:
    """One virtual host: its own users, and the names that answer for it.

    ``sip_digest``: its accounts keep the HA1 secrets SIP digest needs
    (bridge.core.accounts), written when a password is set, while the SIP
    gateway is on.
    ``ldap``: the name of the ``[ldap.NAME]`` directory its users live in
    (docs/directory.md); empty: bridge's own accounts.
    ``admins``: the bare JIDs that administer the host (XEP-0133 commands,
    docs/operations.md) and, with ``[muc] admins`` and ``[pubsub] admins``,
    the MUC and pubsub services.
    """

    aliases: list = _option([])
    admins: list = _option([])
    ldap: str = _option("")
    registration: bool = _option(False)
    sip_digest: bool = _option(True)
    offline_notification: str = _option("none", choices=("none", "sms", "email", "both"))
    mam_retention_days: int = _option(-1, low=-1, high=36500)
    # Site policy (bridge/core/sitepolicy.py, docs/operations.md "Site policies").
    presence_access: str = _option("roster", choices=PRESENCE_ACCESS)
    alerts: str = _option("everyone", choices=ALERT_SENDERS)
    alert_senders: list = _option([])
    max_private_bytes_per_user: int = _option(-1, low=-1)
    max_vcard_bytes: int = _option(-1, low=-1, high=64 * 1024 * 1024)

    def archive_retention_days(self, mam):
        """Days this host's archives keep a message (0: forever): its own setting, else ``[mam] retention_days``."""
        return mam.retention_days if self.mam_retention_days < 0 else self.mam_retention_days


@dataclass(frozen=True)
class StorageConfig:
    """Where the server keeps its data (docs/configuration.md): SQLite (``path``, under data_dir), memory,
    or a PostgreSQL server (docs/scaling.md).

    The PostgreSQL connection string (libpq's, hosts tried in order:
    ``host=a,b target_session_attrs=read-write`` names a standby) comes from
    ``postgresql_dsn`` (which must not hold a password) or from
    ``postgresql_dsn_file``, its first line; a password from
    ``postgresql_password_file``.  Both files must be private to their
    owner (0600).
    """

    backend: str = _option("sqlite", choices=("sqlite", "memory", "postgresql"))
    path: str = _option("bridge.sqlite")
    postgresql_dsn: str = _option("")
    postgresql_dsn_file: str = _option("", path=True)
    postgresql_password_file: str = _option("", path=True)
    postgresql_connect_timeout_seconds: float = _option(5.0, low=2, high=120)
    postgresql_retry_interval_seconds: float = _option(1.0, low=0.05, high=60)
    postgresql_max_queued_bytes: int = _option(16 * 1024 * 1024, low=64 * 1024, high=1024 * 1024 * 1024)

    def postgresql_conninfo(self):
        """The connection string, its password merged in; raises ``ConfigError`` naming the key and file."""
        problems = []
        conninfo = _postgresql_conninfo(self, "the configuration", problems)
        if problems:
            raise ConfigError(problems)
        return conninfo


@dataclass(frozen=True)
class QuotasConfig:
    """What one account may keep on the server, whoever fills it: the account itself (roster, privacy
    and block lists, vCard, private XML) or anyone who can reach it (subscription requests, offline messages).

    Bytes are bounded as well as items: directly, or by a count of items
    each of bounded size (a JID, whose parts ``parse_jid`` keeps within
    RFC 7622's 1023 bytes each, and a bounded text).
    What would pass a quota is refused with an error that says so; nothing
    already kept is dropped to make room.
    """

    max_roster_items_per_user: int = _option(1000, low=1)
    max_roster_item_text_bytes: int = _option(1024, low=64, high=65536)
    max_pending_subscriptions_per_user: int = _option(100, low=1)
    max_subscription_request_text_bytes: int = _option(1024, low=0, high=65536)
    max_offline_messages_per_user: int = _option(1000, low=0)
    max_offline_bytes_per_user: int = _option(10 * 1024 * 1024, low=0)
    max_private_bytes_per_user: int = _option(1024 * 1024, low=1024)
    max_vcard_bytes: int = _option(192 * 1024, low=1024, high=64 * 1024 * 1024)
    max_blocked_items_per_user: int = _option(1000, low=1)
    max_privacy_lists_per_user: int = _option(10, low=1, high=1000)
    max_privacy_items_per_list: int = _option(1000, low=1, high=100000)
    max_privacy_bytes_per_user: int = _option(1024 * 1024, low=4096, high=64 * 1024 * 1024)
    max_push_registrations_per_user: int = _option(5, low=1, high=100)
    max_push_bytes_per_user: int = _option(16384, low=1024, high=1024 * 1024)


@dataclass(frozen=True)
class PushConfig:
    """Push notifications (XEP-0357): how often, and how much, a user's app servers are told."""

    min_interval_seconds: float = _option(10.0, low=0, high=3600)
    include_body: bool = _option(False)
    reply_timeout_seconds: float = _option(60.0, low=1, high=3600)


ARCHIVE_PREFERENCES = ("always", "roster", "never")


@dataclass(frozen=True)
class MAMConfig:
    """The message archive (XEP-0313, docs/features.md): paging, preferences, retention."""

    enabled: bool = _option(True)
    default_page_size: int = _option(50, low=1, high=10000)
    max_page_size: int = _option(250, low=1, high=10000)
    default_preference: str = _option("always", choices=ARCHIVE_PREFERENCES)
    max_preference_jids: int = _option(500, low=0, high=100000)
    retention_days: int = _option(0, low=0, high=36500)
    purge_interval_seconds: float = _option(3600.0, low=60, high=7 * 86400)


@dataclass(frozen=True)
class PEPConfig:
    """Personal eventing (XEP-0163, docs/features.md): what one account may keep in its nodes."""

    max_nodes_per_user: int = _option(100, low=1, high=10000)
    max_items_per_node: int = _option(100, low=1, high=10000)
    max_item_bytes: int = _option(192 * 1024, low=1024, high=64 * 1024 * 1024)
    max_bytes_per_user: int = _option(2 * 1024 * 1024, low=1024, high=1024 * 1024 * 1024)


@dataclass(frozen=True)
class SMTPConfig:
    """Email: offline notification and the conversation archive, sent through one relay."""

    relay: str = _option("")
    starttls: str = _option("required", choices=("required", "optional", "off"))
    ca_file: str = _option("", path=True)
    username: str = _option("")
    password_file: str = _option("", path=True)
    from_address: str = _option("")
    helo_name: str = _option("")
    digest_seconds: float = _option(60.0, low=0, high=86400)
    timeout_seconds: float = _option(60.0, low=1, high=3600)
    retry_initial_seconds: float = _option(10.0, low=0.1, high=86400)
    retry_max_seconds: float = _option(1800.0, low=1, high=7 * 86400)
    archive_recipients: list = _option([])
    archive_interval_seconds: float = _option(3600.0, low=1, high=30 * 86400)

    def relay_address(self):
        """(host, port) of ``relay``; port 25 when it names none."""
        host, _, port = self.relay.rpartition(":")
        if not host or not (port.isascii() and port.isdigit()) or len(port) > 5:
            return self.relay, 25
        return host.strip("[]"), int(port)

    def read_password(self):
        return read_first_line(self.password_file) if self.password_file else ""


@dataclass(frozen=True)
class SMSConfig:
    """The SMS gateway (docs/sms.md): its domain and the limits that protect a phone."""

    enabled: bool = _option(False)
    domain: str = _option("sms.localhost")
    max_parts: int = _option(6, low=1, high=255)
    daily_cap_per_user: int = _option(20, low=0)
    quiet_window_minutes: float = _option(10.0, low=0, high=10080)
    request_receipts: bool = _option(True)
    failure_report: str = _option("error", choices=("error", "notice", "none"))
    max_attempts: int = _option(5, low=1)
    retry_seconds: float = _option(60.0, low=0.1, high=86400)
    receipt_timeout_hours: float = _option(48.0, low=0.01, high=720)
    outbound_sms_per_minute_per_user: int = _option(20, low=0)
    outbound_sms_per_day_per_user: int = _option(200, low=0)
    outbound_sms_per_minute_per_host: int = _option(300, low=0)
    outbound_sms_per_day_per_host: int = _option(10000, low=0)
    verification_code_lifetime_minutes: float = _option(10.0, low=1, high=1440)
    verification_codes_per_day_per_user: int = _option(3, low=0, high=100)
    verification_tries_per_code: int = _option(5, low=1, high=100)
    mo_fragment_timeout_seconds: float = _option(600.0, low=1, high=86400)
    mo_fragments_per_number: int = _option(64, low=2, high=100000)
    mo_fragment_bytes_per_number: int = _option(16384, low=256, high=64 * 1024 * 1024)
    mo_fragments_total: int = _option(10000, low=2, high=10000000)
    mo_fragment_bytes_total: int = _option(1048576, low=256, high=1024 * 1024 * 1024)


MUC_CREATION = ("anyone", "local", "admins")


@dataclass(frozen=True)
class MUCConfig:
    """The multi-user chat service (XEP-0045, docs/muc.md) on ``<subdomain>.<host>`` of every local host."""

    enabled: bool = _option(True)
    subdomain: str = _option("conference")
    creation: str = _option("local", choices=MUC_CREATION)
    admins: list = _option([])
    max_rooms_per_service: int = _option(1000, low=1, high=1000000)
    max_rooms_created_per_user: int = _option(10, low=0, high=100000)
    max_occupants_per_room: int = _option(200, low=1, high=100000)
    max_affiliations_per_room: int = _option(1000, low=1, high=1000000)
    default_history_length: int = _option(20, low=0, high=10000)
    max_history_length: int = _option(100, low=0, high=10000)
    max_history_bytes_per_room: int = _option(262144, low=1024, high=64 * 1024 * 1024)
    max_forwarded_iqs: int = _option(1000, low=1, high=1000000)
    forwarded_iq_timeout_seconds: int = _option(60, low=1, high=3600)


@dataclass(frozen=True)
class PubsubConfig:
    """The publish-subscribe service (XEP-0060, docs/features.md) on ``<subdomain>.<host>`` of every local host."""

    enabled: bool = _option(True)
    subdomain: str = _option("pubsub")
    creation: str = _option("local", choices=MUC_CREATION)
    admins: list = _option([])
    max_nodes_per_service: int = _option(1000, low=1, high=1000000)
    max_nodes_created_per_user: int = _option(10, low=0, high=100000)
    max_items_per_node: int = _option(100, low=1, high=10000)
    max_item_bytes: int = _option(65536, low=1024, high=64 * 1024 * 1024)
    max_bytes_per_node: int = _option(1048576, low=1024, high=1024 * 1024 * 1024)
    max_subscriptions_per_node: int = _option(1000, low=1, high=1000000)
    max_affiliations_per_node: int = _option(1000, low=1, high=1000000)


EXTERNAL_SERVICE_TYPES = ("stun", "stuns", "turn", "turns")


def parse_service_uri(text):
    """A STUN or TURN URI (RFC 7064, RFC 7065: ``turn:HOST[:PORT][?transport=udp|tcp]``) as
    (type, host, port, transport or None); ValueError if malformed.  The port defaults to 3478 (5349 for
    stuns and turns)."""
    kind, sep, rest = text.partition(":")
    address, _, query = rest.partition("?")
    transport = None
    if query:
        name, _, transport = query.partition("=")
        if name != "transport" or transport not in ("udp", "tcp"):
            raise ValueError(f"{text!r}: the only parameter is transport=udp or transport=tcp")
    if kind not in EXTERNAL_SERVICE_TYPES or not sep:
        raise ValueError(f"{text!r} is not stun:, stuns:, turn: or turns:HOST[:PORT]")
    host, port = parse_host_port(address)
    if kind.endswith("s") and transport == "udp":
        raise ValueError(f"{text!r}: {kind} runs over TLS, so over TCP")
    return kind, host.strip("[]"), port or (5349 if kind.endswith("s") else 3478), transport


@dataclass(frozen=True)
class ExternalServicesConfig:
    """External service discovery (XEP-0215, docs/features.md): the STUN and TURN servers clients are told
    of, and the TURN credentials (coturn's REST API scheme: a secret shared with the TURN server)."""

    services: list = _option([])
    turn_secret_file: str = _option("", path=True)
    credential_lifetime_seconds: int = _option(86400, low=60, high=7 * 86400)

    def read_secret(self):
        return read_first_line(self.turn_secret_file) if self.turn_secret_file else ""


@dataclass(frozen=True)
class Proxy65Config:
    """The SOCKS5 bytestreams proxy (XEP-0065, docs/features.md) on ``<subdomain>.<host>``, off by default."""

    enabled: bool = _option(False)
    subdomain: str = _option("proxy")
    endpoints: list = _option(["tcp:7777"], endpoints=True)
    # The host name or address clients connect to; empty: the listener's address, else the local host's name.
    public_host: str = _option("")
    max_pending_connections_per_address: int = _option(10, low=1, high=10000)
    max_pending_connections: int = _option(1000, low=2, high=1000000)
    pending_timeout_seconds: float = _option(60.0, low=1, high=3600)
    max_active_streams: int = _option(1000, low=1, high=1000000)
    # Each direction of a stream; 0: no limit.
    max_bytes_per_second_per_stream: int = _option(0, low=0, high=10 ** 10)


@dataclass(frozen=True)
class UploadConfig:
    """HTTP File Upload (XEP-0363, docs/web.md) on ``<subdomain>.<host>``: files under data_dir/upload."""

    enabled: bool = _option(True)
    subdomain: str = _option("upload")
    # The scheme, host and port of the URLs handed out; empty: the first HTTPS (else HTTP) listener, by host name.
    public_url: str = _option("")
    max_file_bytes: int = _option(100 * 1024 * 1024, low=1, high=1024 ** 4)
    quota_bytes_per_user: int = _option(1024 * 1024 * 1024, low=1, high=1024 ** 5)
    expire_after_days: int = _option(30, low=0, high=36500)
    slot_lifetime_seconds: int = _option(300, low=10, high=86400)


@dataclass(frozen=True)
class SMSCConfig:
    """One SMSC the gateway binds to as an ESME (bind_transceiver)."""

    host: str = _option("127.0.0.1")
    port: int = _option(2775, low=1, high=65535)
    tls: bool = _option(False)
    ca_file: str = _option("", path=True)
    system_id: str = _option("")
    password: str = _option("")
    password_file: str = _option("", path=True)
    system_type: str = _option("")
    source_addr: str = _option("")
    source_addr_ton: int = _option(1, low=0, high=6)
    source_addr_npi: int = _option(1, low=0, high=18)
    submit_rate_per_second: float = _option(10.0, low=0.01, high=100000)
    window: int = _option(10, low=1, high=1000)
    enquire_link_seconds: float = _option(30.0, low=0, high=3600)
    response_timeout_seconds: float = _option(10.0, low=0.1, high=600)
    reconnect_min_seconds: float = _option(1.0, low=0.01, high=3600)
    reconnect_max_seconds: float = _option(60.0, low=0.01, high=86400)
    throttle_backoff_seconds: float = _option(1.0, low=0.01, high=3600)

    def read_password(self):
        """The bind password: the first line of password_file, else the inline one."""
        return read_first_line(self.password_file) if self.password_file else self.password


@dataclass(frozen=True)
class LDAPConfig:
    """One LDAP directory that hosts may keep their users in (docs/directory.md)."""

    uris: list = _option([])
    ca_file: str = _option("", path=True)
    bind_dn: str = _option("")
    bind_password_file: str = _option("", path=True)
    base_dn: str = _option("")
    user_filter: str = _option("(objectClass=inetOrgPerson)")
    uid_attribute: str = _option("uid")
    name_attribute: str = _option("cn")
    mail_attribute: str = _option("mail")
    mobile_attribute: str = _option("mobile")
    photo_attribute: str = _option("jpegPhoto")
    changed_attribute: str = _option("modifyTimestamp")
    max_photo_bytes: int = _option(65536, low=0, high=1048576)
    max_search_results: int = _option(50, low=1, high=1000)
    group_base_dn: str = _option("")
    group_filter: str = _option("(objectClass=groupOfNames)")
    group_name_attribute: str = _option("cn")
    group_member_attribute: str = _option("member")
    group_refresh_seconds: float = _option(300.0, low=10, high=86400)
    max_group_members: int = _option(500, low=2, high=10000)
    admins_group: str = _option("")
    room_creators_group: str = _option("")
    pool_size: int = _option(4, low=1, high=64)
    timeout_seconds: float = _option(5.0, low=0.1, high=300)
    retry_seconds: float = _option(30.0, low=1, high=3600)
    health_check_seconds: float = _option(30.0, low=1, high=3600)

    def read_bind_password(self):
        return read_first_line(self.bind_password_file)


_UNESCAPED_COLON = re.compile(r"(?<!\\):")
# The options each kind of listening endpoint takes (Twisted's endpoint strings; TLS is not among them:
# a listener list says whether its sockets speak TLS, with its section's certificate and policy).
_ENDPOINT_OPTIONS = {"tcp": {"port", "interface", "backlog"}, "tcp6": {"port", "interface", "backlog"},
                     "unix": {"address", "mode", "backlog", "lockfile"}}


@dataclass(frozen=True)
class ClusterConfig:
    """Several nodes as one service, with the session table in Redis (docs/scaling.md).  Off: one process."""

    enabled: bool = _option(False)
    node_name: str = _option("")
    redis_address: str = _option("127.0.0.1:6379")
    password_file: str = _option("", path=True)
    lease_seconds: float = _option(10.0, low=1, high=300)
    stream_max_entries: int = _option(100000, low=100, high=100000000)
    queue_poll_seconds: float = _option(1.0, low=0.05, high=60)

    def read_password(self):
        return read_first_line(self.password_file) if self.password_file else ""


@dataclass(frozen=True)
class MuxListenerConfig:
    """Links from multiplexors (``twistd bridge-mux``, docs/scaling.md): each of their clients a c2s stream.

    ``endpoints`` carry the links in clear (loopback, a private network), ``tls_endpoints`` under TLS with
    the [c2s] certificate; either way a link proves ``secret_file``'s secret before any client is taken."""

    endpoints: list = _option([], endpoints=True)
    tls_endpoints: list = _option([], endpoints=True)
    secret_file: str = _option("", path=True)
    max_frame_bytes: int = _option(65536, low=1024, high=16 * 1024 * 1024)
    max_clients_per_link: int = _option(10000, low=1, high=1000000)

    def read_secret(self):
        return read_first_line(self.secret_file).encode("utf-8")


def check_listening_endpoint(text):
    """ValueError unless ``text`` is ``tcp:PORT``, ``tcp6:PORT`` (options ``interface=``, ``backlog=``) or
    ``unix:PATH``, with a PORT of 0 to 65535: what would otherwise fail only when the listener starts."""
    kind, _, rest = text.partition(":")
    if kind not in _ENDPOINT_OPTIONS:
        raise ValueError(f"{text!r}: unknown endpoint type {kind!r} (tcp, tcp6 or unix; TLS is chosen by the "
                         "list the endpoint is in)")
    parts = _UNESCAPED_COLON.split(rest) if rest else []
    positional = [part for part in parts if "=" not in part]
    options = dict(part.split("=", 1) for part in parts if "=" in part)
    first = "port" if kind != "unix" else "address"
    if positional:
        if first in options or len(positional) > 1:
            raise ValueError(f"{text!r}: {kind}:{first.upper()} with options NAME=VALUE")
        options[first] = positional[0]
    unknown = set(options) - _ENDPOINT_OPTIONS[kind]
    if unknown:
        raise ValueError(f"{text!r}: unknown option {sorted(unknown)[0]!r} of a {kind} endpoint")
    if not options.get(first):
        raise ValueError(f"{text!r}: no {first}")
    numbers = ("port", "backlog") if kind != "unix" else ("backlog",)
    for name in numbers:
        value = options.get(name)
        if value is not None and not (value.isascii() and value.isdigit()):
            raise ValueError(f"{text!r}: {name} must be a number, not {value!r}")
    if kind != "unix" and int(options["port"]) > 65535:
        raise ValueError(f"{text!r}: port must be at most 65535")


def parse_udp_endpoint(text):
    """``udp:PORT`` or ``udp:PORT:interface=ADDRESS`` as (port, interface); ValueError if malformed.

    Twisted has no server endpoint string for UDP, so the SIP UDP listeners
    use this form, modelled on the ``tcp:`` strings; an empty interface
    means every IPv4 address.
    """
    parts = text.split(":", 2)
    if (len(parts) < 2 or parts[0] != "udp" or not (parts[1].isascii() and parts[1].isdigit())
            or not 0 <= int(parts[1]) <= 65535):
        raise ValueError(f"{text!r} is not udp:PORT or udp:PORT:interface=ADDRESS")
    interface = ""
    if len(parts) == 3:
        name, sep, interface = parts[2].partition("=")
        if name != "interface" or not sep or not interface:
            raise ValueError(f"{text!r} is not udp:PORT or udp:PORT:interface=ADDRESS")
    return int(parts[1]), interface


def parse_host_port(text):
    """``HOST``, ``HOST:PORT``, ``[IPv6]`` or ``[IPv6]:PORT`` as (host, port or None)."""
    problem = ValueError(f"must be HOST or HOST:PORT (IPv6 in brackets), not {text!r}")
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[:end + 1], text[end + 1:]
        if end < 0 or (rest and not rest.startswith(":")):
            raise problem
        port = rest[1:] if rest else None
    else:
        host, sep, port = text.partition(":")
        port = port if sep else None
    if not host.strip("[]") or any(c.isspace() for c in host) or (
            port is not None and (not (port.isascii() and port.isdigit()) or not 0 < int(port) <= 65535)):
        raise problem
    return host, int(port) if port is not None else None


def parse_s2s_route(text):
    """An ``[s2s] static_routes`` value, ``HOST:PORT`` or ``tls:HOST:PORT`` (direct TLS), as
    (host, port, direct TLS); ValueError if malformed."""
    direct_tls = text.startswith("tls:")
    try:
        host, port = parse_host_port(text.removeprefix("tls:"))
    except ValueError:
        port = None
    if port is None:
        raise ValueError(f"must be HOST:PORT or tls:HOST:PORT (IPv6 in brackets), not {text!r}")
    return host.strip("[]"), port, direct_tls


@dataclass(frozen=True)
class SIPConfig(ListenerTLS):
    """The SIP/SIMPLE gateway (docs/sip.md): listeners, registrar and message limits.

    On by default, on the standard ports (UDP and TCP 5060, TLS 5061).

    ``udp_endpoints`` use ``udp:PORT[:interface=ADDRESS]`` (see
    ``parse_udp_endpoint``); ``tcp_endpoints`` and ``tls_endpoints`` are
    Twisted endpoint strings, the latter wrapped in TLS with this section's
    own policy.  ``realm`` names the host whose accounts answer a REGISTER
    whose To domain is not a host of this server (empty: the first host).
    ``domain`` is the gateway's XMPP domain, where foreign SIP users appear
    (``carol\\40pbx.example@sip.localhost``); ``static_routes`` maps a
    foreign SIP domain to the ``HOST[:PORT]`` its requests go to, and
    ``allowed_domains`` lists the foreign SIP domains whose MESSAGEs are let
    in.  A foreign domain without a static route is looked up in DNS (SRV,
    then A; RFC 3263), at ``dns_server`` (``HOST:PORT``) when set, else at
    the system's resolver.
    """

    enabled: bool = _option(True)
    udp_endpoints: list = _option(["udp:5060"])
    tcp_endpoints: list = _option(["tcp:5060"], endpoints=True)
    tls_endpoints: list = _option(["tcp:5061"], endpoints=True)
    realm: str = _option("")
    advertised_address: str = _option("")
    max_header_bytes: int = _option(16384, low=1024, high=1024 * 1024)
    max_body_bytes: int = _option(65536, low=0, high=16 * 1024 * 1024)
    min_expires_seconds: int = _option(60, low=1, high=86400)
    max_expires_seconds: int = _option(3600, low=1, high=7 * 86400)
    default_expires_seconds: int = _option(3600, low=1, high=7 * 86400)
    max_contacts_per_user: int = _option(10, low=1, high=1000)
    nonce_lifetime_seconds: int = _option(300, low=10, high=86400)
    digest_algorithms: list = _option(["MD5", "SHA-256"])
    domain: str = _option("sip.localhost")
    static_routes: dict = _option({})
    dns_server: str = _option("")
    allowed_domains: list = _option([])
    max_pending_messages: int = _option(10000, low=1, high=10**7)
    max_server_transactions: int = _option(10000, low=1, high=10**7)
    max_server_transaction_bytes: int = _option(33554432, low=65536, high=2**34)
    rate_limit_bytes_per_second: int = _option(100000, low=100)
    rate_limit_burst_bytes: int = _option(200000, low=1024)
    max_connections_per_address: int = _option(20, low=1)
    idle_timeout_seconds: float = _option(600.0, low=10, high=86400)


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics (docs/operations.md): a listener of their own, off by default, answering only
    the addresses listed."""

    endpoints: list = _option([], endpoints=True)
    allowed_addresses: list = _option(["127.0.0.0/8", "::1/128"])


@dataclass(frozen=True)
class LogConfig:
    """Log levels (docs/operations.md, "Log levels"): ``level`` for all of bridge, ``levels`` per subsystem
    (bridge/core/loglevels.py: a subsystem's name, or a dotted ``bridge.`` namespace) to a level."""

    level: str = _option("info", choices=LOG_LEVELS)
    levels: dict = _option({})


@dataclass(frozen=True)
class APIConfig:
    """The HTTP API for calendars and ticket systems (docs/operations.md, "HTTP API"): presence lookup and
    alerts, on the HTTP listener under ``path``, off by default, for a bearer token kept in a 0600 file."""

    enabled: bool = _option(False)
    path: str = _option("/api/")
    token_file: str = _option("", path=True)
    hosts: list = _option([], domains=True)
    max_request_bytes: int = _option(65536, low=256, high=16 * 1024 * 1024)
    max_recipients: int = _option(1000, low=1, high=100000)
    max_alert_text_bytes: int = _option(4096, low=16, high=65536)

    def read_token(self):
        return read_first_line(self.token_file) if self.token_file else ""


@dataclass(frozen=True)
class Config:
    data_dir: str = _option("data", path=True)
    tls: TLSConfig = field(default_factory=TLSConfig)
    c2s: C2SConfig = field(default_factory=C2SConfig)
    s2s: S2SConfig = field(default_factory=S2SConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)
    component_listener: ComponentListenerConfig = field(default_factory=ComponentListenerConfig)
    components: dict = field(default_factory=dict)
    storage: StorageConfig = field(default_factory=StorageConfig)
    quotas: QuotasConfig = field(default_factory=QuotasConfig)
    push: PushConfig = field(default_factory=PushConfig)
    mam: MAMConfig = field(default_factory=MAMConfig)
    pep: PEPConfig = field(default_factory=PEPConfig)
    smtp: SMTPConfig = field(default_factory=SMTPConfig)
    hosts: dict = field(default_factory=lambda: {"localhost": HostConfig()})
    sms: SMSConfig = field(default_factory=SMSConfig)
    sip: SIPConfig = field(default_factory=SIPConfig)
    muc: MUCConfig = field(default_factory=MUCConfig)
    upload: UploadConfig = field(default_factory=UploadConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    pubsub: PubsubConfig = field(default_factory=PubsubConfig)
    external_services: ExternalServicesConfig = field(default_factory=ExternalServicesConfig)
    proxy65: Proxy65Config = field(default_factory=Proxy65Config)
    smsc: dict = field(default_factory=dict)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    mux_listener: MuxListenerConfig = field(default_factory=MuxListenerConfig)
    ldap: dict = field(default_factory=dict)
    api: APIConfig = field(default_factory=APIConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = "(embedded defaults)"

    def data_path(self, name):
        """``name`` resolved against ``data_dir`` (absolute names stay as they are)."""
        return os.path.join(self.data_dir, name)

    def host_for(self, domain):
        """The hosted domain that ``domain`` names, directly or as an alias, or None."""
        if domain in self.hosts:
            return domain
        for name, host in self.hosts.items():
            if domain in host.aliases:
                return name
        return None

    def is_host_admin(self, bare, host=None):
        """Whether the bare JID ``bare`` (lowercase) is in ``[hosts.NAME] admins`` of ``host``, or of any
        host when ``host`` is None."""
        hosts = [self.hosts[host]] if host is not None else self.hosts.values()
        return any(sitepolicy.is_admin(config, bare) for config in hosts)


_SECTIONS = {"tls": TLSConfig, "c2s": C2SConfig, "s2s": S2SConfig, "http": HTTPConfig, "storage": StorageConfig,
             "quotas": QuotasConfig, "push": PushConfig, "mam": MAMConfig, "pep": PEPConfig, "smtp": SMTPConfig,
             "component_listener": ComponentListenerConfig, "sms": SMSConfig, "sip": SIPConfig, "muc": MUCConfig,
             "upload": UploadConfig, "pubsub": PubsubConfig, "external_services": ExternalServicesConfig,
             "metrics": MetricsConfig, "cluster": ClusterConfig,
             "proxy65": Proxy65Config, "api": APIConfig, "log": LogConfig,
             "mux_listener": MuxListenerConfig}
# Tables of named sub-tables: [hosts.NAME], [components.DOMAIN], [smsc.NAME].
_NAMED = {"hosts": HostConfig, "components": ComponentConfig, "smsc": SMSCConfig, "ldap": LDAPConfig}


def _type_name(kind):
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list of strings", dict: "a table of strings"}[kind]


def _check_value(kind, value, meta):
    """The reason ``value`` does not fit, or None."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        return f"must be {_type_name(kind)}, not {value!r}"
    if kind is float and math.isnan(value):
        # (nan would pass the range checks below: every comparison with it is false)
        return f"must be a number, not {value!r}"
    if kind is list and not all(isinstance(item, str) for item in value):
        return f"must be {_type_name(kind)}, not {value!r}"
    if kind is dict and not all(isinstance(item, str) for item in value.values()):
        return f"must be {_type_name(kind)}, not {value!r}"
    if meta.get("domains") and not all(normalise_domain(name) for name in value):
        return f"must hold domain names, not {next(name for name in value if not normalise_domain(name))!r}"
    if meta.get("endpoints"):
        for description in value:
            try:
                check_listening_endpoint(description)
            except ValueError as error:
                return str(error)
    if meta.get("choices") and value not in meta["choices"]:
        return f"must be one of {', '.join(meta['choices'])}, not {value!r}"
    if meta.get("low") is not None and value < meta["low"]:
        return f"must be at least {meta['low']}, not {value!r}"
    if meta.get("high") is not None and value > meta["high"]:
        return f"must be at most {meta['high']}, not {value!r}"
    return None


def _build(cls, table, path, problems, where):
    """Instantiate ``cls`` from ``table``, appending every problem found."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in fields or key == "source":
            problems.append(f"{where}: {path}{key}: unknown key")
            continue
        reason = _check_value(hints[key], value, fields[key].metadata)
        if reason:
            problems.append(f"{where}: {path}{key}: {reason}")
        elif fields[key].metadata.get("domains"):
            values[key] = ({normalise_domain(name): item for name, item in value.items()} if isinstance(value, dict)
                           else [normalise_domain(name) for name in value])
        else:
            values[key] = float(value) if hints[key] is float else value
    return cls(**values)


# Tables of earlier versions, and where their keys went.
_MOVED = {"offline": "this table is gone: max_messages_per_user is now [quotas] max_offline_messages_per_user"}


def parse(document, where):
    """A ``Config`` from a parsed TOML document; ``where`` names it in errors."""
    problems = []
    top = {}
    sections = {}
    for key, value in document.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                problems.append(f"{where}: {key}: must be a table")
            else:
                sections[key] = _build(_SECTIONS[key], value, f"{key}.", problems, where)
        elif key in _NAMED:
            if not isinstance(value, dict) or (key == "hosts" and not value):
                problems.append(f"{where}: {key}: must be a table of [{key}.NAME] tables")
                continue
            named = sections[key] = {}
            for name, table in value.items():
                if not isinstance(table, dict):
                    problems.append(f"{where}: {key}.{name}: must be a table")
                    continue
                named[name.lower()] = _build(_NAMED[key], table, f"{key}.{name}.", problems, where)
        elif key in _MOVED:
            problems.append(f"{where}: {key}: {_MOVED[key]}")
        else:
            top[key] = value
    base = _build(Config, top, "", problems, where)
    for domain, component in sections.get("components", {}).items():
        if not (component.secret or component.secret_file):
            problems.append(f"{where}: components.{domain}: needs secret or secret_file")
        if domain in sections.get("hosts", base.hosts):
            problems.append(f"{where}: components.{domain}: is also a host")
    names = {}
    for name, host in sections.get("hosts", {}).items():
        for alias in [name, *host.aliases]:
            if alias.lower() in names:
                problems.append(f"{where}: hosts.{name}.aliases: {alias!r} already names host {names[alias.lower()]!r}")
            names[alias.lower()] = name
        for admin in host.admins:
            jid = parse_jid(admin)
            if jid is None or jid.resource is not None or jid.user is None:
                problems.append(f"{where}: hosts.{name}.admins: {admin!r} is not a bare JID (user@host)")
    sms = sections.get("sms", base.sms)
    if sms.enabled:
        domain = sms.domain.lower()
        if not domain:
            problems.append(f"{where}: sms.domain: must not be empty")
        elif domain in names or domain in sections.get("hosts", base.hosts):
            problems.append(f"{where}: sms.domain: {sms.domain!r} is also a host")
        elif domain in sections.get("components", {}):
            problems.append(f"{where}: sms.domain: {sms.domain!r} is also a component")
        if not sections.get("smsc"):
            problems.append(f"{where}: sms: enabled, but no [smsc.NAME] table")
    muc = sections.get("muc", base.muc)
    if muc.enabled:
        subdomain = muc.subdomain.lower()
        if not subdomain or "." in subdomain or parse_jid(subdomain + ".example") is None:
            problems.append(f"{where}: muc.subdomain: must be one DNS label (e.g. conference), not {muc.subdomain!r}")
        for host in sections.get("hosts", base.hosts):
            domain = f"{subdomain}.{host}"
            if domain in names or domain in sections.get("hosts", base.hosts):
                problems.append(f"{where}: muc.subdomain: {domain!r} is also a host")
            elif domain in sections.get("components", {}):
                problems.append(f"{where}: muc.subdomain: {domain!r} is also a component")
            elif domain in (sms.domain.lower() if sms.enabled else None,
                            sections.get("sip", base.sip).domain.lower() if sections.get("sip", base.sip).enabled else None):
                problems.append(f"{where}: muc.subdomain: {domain!r} is also a gateway's domain")
    for admin in muc.admins:
        jid = parse_jid(admin)
        if jid is None or jid.resource is not None or jid.user is None:
            problems.append(f"{where}: muc.admins: {admin!r} is not a bare JID (user@host)")
    if muc.default_history_length > muc.max_history_length:
        problems.append(f"{where}: muc.default_history_length: must be at most max_history_length "
                        f"({muc.max_history_length})")
    upload = sections.get("upload", base.upload)
    if upload.enabled:
        subdomain = upload.subdomain.lower()
        if not subdomain or "." in subdomain or parse_jid(subdomain + ".example") is None:
            problems.append(f"{where}: upload.subdomain: must be one DNS label (e.g. upload), not {upload.subdomain!r}")
        elif muc.enabled and subdomain == muc.subdomain.lower():
            problems.append(f"{where}: upload.subdomain: {upload.subdomain!r} is also the MUC service's")
        for host in sections.get("hosts", base.hosts):
            if f"{subdomain}.{host}" in sections.get("hosts", base.hosts):
                problems.append(f"{where}: upload.subdomain: {subdomain}.{host!r} is also a host")
        if upload.public_url and not re.match(r"^https?://[^/?#\s]+$", upload.public_url):
            problems.append(f"{where}: upload.public_url: must be scheme://host[:port] without a path, "
                            f"not {upload.public_url!r}")
    pubsub = sections.get("pubsub", base.pubsub)
    if pubsub.enabled:
        subdomain = pubsub.subdomain.lower()
        taken = {"the MUC service's": muc.subdomain.lower() if muc.enabled else None,
                 "the upload service's": upload.subdomain.lower() if upload.enabled else None}
        if not subdomain or "." in subdomain or parse_jid(subdomain + ".example") is None:
            problems.append(f"{where}: pubsub.subdomain: must be one DNS label (e.g. pubsub), not {pubsub.subdomain!r}")
        for owner, other in taken.items():
            if subdomain == other:
                problems.append(f"{where}: pubsub.subdomain: {pubsub.subdomain!r} is also {owner}")
        for host in sections.get("hosts", base.hosts):
            if f"{subdomain}.{host}" in names or f"{subdomain}.{host}" in sections.get("components", {}):
                problems.append(f"{where}: pubsub.subdomain: {subdomain}.{host!r} is also a host or a component")
    for admin in pubsub.admins:
        jid = parse_jid(admin)
        if jid is None or jid.resource is not None or jid.user is None:
            problems.append(f"{where}: pubsub.admins: {admin!r} is not a bare JID (user@host)")
    if pubsub.max_item_bytes > pubsub.max_bytes_per_node:
        problems.append(f"{where}: pubsub.max_item_bytes: must be at most max_bytes_per_node "
                        f"({pubsub.max_bytes_per_node})")
    proxy65 = sections.get("proxy65", base.proxy65)
    if proxy65.enabled:
        subdomain = proxy65.subdomain.lower()
        taken = {"the MUC service's": muc.subdomain.lower() if muc.enabled else None,
                 "the upload service's": upload.subdomain.lower() if upload.enabled else None,
                 "the pubsub service's": pubsub.subdomain.lower() if pubsub.enabled else None}
        if not subdomain or "." in subdomain or parse_jid(subdomain + ".example") is None:
            problems.append(f"{where}: proxy65.subdomain: must be one DNS label (e.g. proxy), "
                            f"not {proxy65.subdomain!r}")
        for owner, other in taken.items():
            if subdomain == other:
                problems.append(f"{where}: proxy65.subdomain: {proxy65.subdomain!r} is also {owner}")
        for host in sections.get("hosts", base.hosts):
            if f"{subdomain}.{host}" in names or f"{subdomain}.{host}" in sections.get("components", {}):
                problems.append(f"{where}: proxy65.subdomain: {subdomain}.{host!r} is also a host or a component")
        if not proxy65.endpoints:
            problems.append(f"{where}: proxy65.endpoints: the proxy needs a listener when it is enabled")
    external = sections.get("external_services", base.external_services)
    turn = False
    for uri in external.services:
        try:
            turn = parse_service_uri(uri)[0].startswith("turn") or turn
        except ValueError as error:
            problems.append(f"{where}: external_services.services: {error}")
    if turn and not external.turn_secret_file:
        problems.append(f"{where}: external_services.turn_secret_file: TURN services need the secret shared "
                        "with the TURN server (its static-auth-secret)")
    mam = sections.get("mam", base.mam)
    if mam.default_page_size > mam.max_page_size:
        problems.append(f"{where}: mam.default_page_size: must be at most max_page_size ({mam.max_page_size})")
    pep = sections.get("pep", base.pep)
    if pep.max_item_bytes > pep.max_bytes_per_user:
        problems.append(f"{where}: pep.max_item_bytes: must be at most max_bytes_per_user ({pep.max_bytes_per_user})")
    sip = sections.get("sip", base.sip)
    for description in sip.udp_endpoints:
        try:
            parse_udp_endpoint(description)
        except ValueError as error:
            problems.append(f"{where}: sip.udp_endpoints: {error}")
    if sip.realm and sip.realm.lower() not in names and sip.realm.lower() not in sections.get("hosts", base.hosts):
        problems.append(f"{where}: sip.realm: {sip.realm!r} is not a host of this server")
    if not sip.digest_algorithms or len(set(sip.digest_algorithms)) != len(sip.digest_algorithms) or any(
            algorithm not in SIP_DIGEST_ALGORITHMS for algorithm in sip.digest_algorithms):
        problems.append(f"{where}: sip.digest_algorithms: must name SHA-256, MD5 or both, each once, "
                        f"not {sip.digest_algorithms!r}")
    if not sip.min_expires_seconds <= sip.default_expires_seconds <= sip.max_expires_seconds:
        problems.append(f"{where}: sip.default_expires_seconds: must lie between min_expires_seconds "
                        "and max_expires_seconds")
    if sip.advertised_address:
        try:
            parse_host_port(sip.advertised_address)
        except ValueError as error:
            problems.append(f"{where}: sip.advertised_address: {error}")
    sip_domain = sip.domain.lower()
    if not sip.enabled:
        pass
    elif not sip_domain:
        problems.append(f"{where}: sip.domain: must name the gateway's domain (e.g. sip.localhost)")
    elif sip_domain in names or sip_domain in sections.get("hosts", base.hosts):
        problems.append(f"{where}: sip.domain: {sip.domain!r} is also a host")
    elif sip_domain in sections.get("components", {}):
        problems.append(f"{where}: sip.domain: {sip.domain!r} is also a component")
    for foreign, destination in sip.static_routes.items():
        try:
            parse_host_port(destination)
        except ValueError as error:
            problems.append(f"{where}: sip.static_routes.{foreign}: {error}")
    for foreign, destination in sections.get("s2s", base.s2s).static_routes.items():
        try:
            parse_s2s_route(destination)
        except ValueError as error:
            problems.append(f"{where}: s2s.static_routes.{foreign}: {error}")
    for name in ("s2s", "sip"):
        dns_server = sections.get(name, getattr(base, name)).dns_server
        if dns_server:
            try:
                host, port = parse_host_port(dns_server)
                if port is None:
                    raise ValueError(f"must be HOST:PORT, not {dns_server!r}")
            except ValueError as error:
                problems.append(f"{where}: {name}.dns_server: {error}")
                continue
            try:
                ipaddress.ip_address(host.strip("[]"))
            except ValueError:
                problems.append(f"{where}: {name}.dns_server: must be an IP address and a port, not {dns_server!r}")
    for proxy in sections.get("http", base.http).trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            problems.append(f"{where}: http.trusted_proxies: {proxy!r} is not an IP address or network")
    for name in ("c2s", "s2s", "http"):
        for proxy in sections.get(name, getattr(base, name)).proxy_protocol_trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                problems.append(f"{where}: {name}.proxy_protocol_trusted_proxies: {proxy!r} is not an IP address "
                                "or network")
    for network in sections.get("metrics", base.metrics).allowed_addresses:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            problems.append(f"{where}: metrics.allowed_addresses: {network!r} is not an IP address or network")
    for name, smsc in sections.get("smsc", {}).items():
        if smsc.reconnect_max_seconds < smsc.reconnect_min_seconds:
            problems.append(f"{where}: smsc.{name}.reconnect_max_seconds: must be at least reconnect_min_seconds")
    problems.extend(_cluster_problems(sections.get("cluster", base.cluster), where))
    problems.extend(_site_policy_problems(sections.get("hosts", base.hosts), where))
    problems.extend(_log_problems(sections.get("log", base.log), where))
    problems.extend(_api_problems(sections.get("api", base.api), sections.get("hosts", base.hosts), where))
    _check_directories(sections, base, where, problems)
    if problems:
        raise ConfigError(problems)
    return dataclasses.replace(base, **sections, source=where)


def _check_directories(sections, base, where, problems):
    """[ldap.NAME] tables complete, with URIs that parse and filters in parentheses; every host's
    ``ldap`` naming one of them."""
    directories = sections.get("ldap", {})
    for name, directory in directories.items():
        if not directory.uris:
            problems.append(f"{where}: ldap.{name}.uris: must name at least one ldap:// or ldaps:// server")
        for uri in directory.uris:
            try:
                parse_ldap_uri(uri)
            except ValueError as error:
                problems.append(f"{where}: ldap.{name}.uris: {error}")
        for key in ("bind_dn", "bind_password_file", "base_dn"):
            if not getattr(directory, key):
                problems.append(f"{where}: ldap.{name}.{key}: must not be empty")
        for key in ("admins_group", "room_creators_group"):
            if getattr(directory, key) and not directory.group_base_dn:
                problems.append(f"{where}: ldap.{name}.{key}: needs group_base_dn, where the groups are read")
        for key in ("user_filter", "group_filter"):
            text = getattr(directory, key)
            if not (text.startswith("(") and text.endswith(")")):
                problems.append(f"{where}: ldap.{name}.{key}: must be an LDAP filter in parentheses, not {text!r}")
    for host_name, host in sections.get("hosts", base.hosts).items():
        if host.ldap and host.ldap.lower() not in directories:
            problems.append(f"{where}: hosts.{host_name}.ldap: no [ldap.{host.ldap}] table")
        if host.ldap and host.registration:
            problems.append(f"{where}: hosts.{host_name}.registration: must be false on a host whose users "
                            "live in a directory")


def _site_policy_problems(hosts, where):
    """The site policy's lists of a host hold bare JIDs (``admins``, ``alert_senders``)."""
    problems = []
    for host_name, host in hosts.items():
        for key in ("admins", "alert_senders"):
            for text in getattr(host, key):
                jid = parse_jid(text)
                if jid is None or not jid.user or jid.resource:
                    problems.append(f"{where}: hosts.{host_name}.{key}: {text!r} is not a bare JID (user@host)")
    return problems


def _log_problems(config, where):
    """Each of ``[log] levels`` names a subsystem (or a ``bridge.`` namespace) and a level."""
    problems = []
    for name, level in config.levels.items():
        if namespaces_of_log(name) is None:
            problems.append(f"{where}: log.levels.{name}: not a subsystem ({', '.join(LOG_SUBSYSTEMS)}) "
                            "nor a namespace beginning with 'bridge.'")
        if level not in LOG_LEVELS:
            problems.append(f"{where}: log.levels.{name}: must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
    return problems


def _api_problems(api, hosts, where):
    """The API's path is a folder of its own, and its hosts are hosted."""
    problems = []
    if not (api.path.startswith("/") and api.path.endswith("/") and len(api.path) > 1):
        problems.append(f"{where}: api.path: must begin and end with '/' and not be '/', not {api.path!r}")
    for name in api.hosts:
        if name not in hosts:
            problems.append(f"{where}: api.hosts: {name!r} is not a [hosts.NAME] table")
    return problems


def _cluster_problems(cluster, where):
    if not cluster.enabled:
        return []
    problems = []
    if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", cluster.node_name):
        problems.append(f"{where}: cluster.node_name: must be 1 to 64 letters, digits, '_', '.' or '-' "
                        f"(unique in the cluster), not {cluster.node_name!r}")
    try:
        parse_host_port(cluster.redis_address)
    except ValueError as error:
        problems.append(f"{where}: cluster.redis_address: {error}")
    return problems


# Folders for configuration only: a relative data_dir in a file there has no sensible base.
SYSTEM_CONFIG_FOLDERS = ("/etc", "/usr/local/etc")


def data_dir_base(config_folder, environ):
    """The folder a relative ``data_dir`` is resolved against (docs/deploy.md), or None when there is
    none: systemd's state directory (``$STATE_DIRECTORY``, from ``StateDirectory=``) when set; else the
    configuration file's folder, unless that is a system configuration folder such as /etc/bridge
    (the database and keys are not configuration); without a file, the working directory."""
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return state
    if config_folder is None:
        return os.getcwd()
    if any(config_folder == root or config_folder.startswith(root + os.sep) for root in SYSTEM_CONFIG_FOLDERS):
        return None
    return config_folder


def _with_data_dir(config, config_folder, environ, where):
    """``config`` with a relative ``data_dir`` made absolute by ``data_dir_base``; ConfigError without a base."""
    if os.path.isabs(config.data_dir):
        return config
    base = data_dir_base(config_folder, environ)
    if base is None:
        raise ConfigError([f"{where}: data_dir: {config.data_dir!r} is relative, and {config_folder} holds "
                           "configuration, not data: give an absolute path (e.g. /var/lib/bridge), or run "
                           "the server with systemd's StateDirectory= (STATE_DIRECTORY)"])
    return dataclasses.replace(config, data_dir=os.path.join(base, config.data_dir))


def load(path=None, environ=None):
    """Read ``path`` (a TOML file); with None, the embedded defaults.  ``environ``: the process's
    environment (``os.environ``), where ``STATE_DIRECTORY`` may give the base of a relative data_dir."""
    environ = os.environ if environ is None else environ
    if path is None:
        return _with_data_dir(Config(), None, environ, "(embedded defaults)")
    document = read_toml(path)
    folder = os.path.dirname(os.path.abspath(path))
    config = _resolve_paths(_with_data_dir(parse(document, path), folder, environ, path), folder)
    problems = _missing_files(config, path)
    if problems:
        raise ConfigError(problems)
    return config


def read_toml(path):
    """The parsed TOML document of ``path``; ConfigError naming the file if it cannot be read or parsed."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise ConfigError([f"{path}: cannot be read: {error.strerror}"])
    except (ValueError, RecursionError) as error:
        # tomllib raises TOMLDecodeError for most faults, but UnicodeDecodeError
        # (not UTF-8), ValueError (an integer over Python's 4300 digits) and
        # RecursionError (arrays or tables nested thousands deep) for some.
        reason = "nested too deeply" if isinstance(error, RecursionError) else error
        raise ConfigError([f"{path}: not valid TOML: {reason}"])


def _secret_file(where, key, path, problems):
    """The first line of the file of a secret, which must be its owner's alone (0600) and not empty; None, with
    the problem appended, otherwise."""
    try:
        mode = os.stat(path).st_mode
        secret = read_first_line(path)
    except OSError as error:
        problems.append(f"{where}: {key}: {path}: {error.strerror}")
        return None
    if mode & 0o077:
        problems.append(f"{where}: {key}: {path}: readable by others (mode {mode & 0o777:o}); a secret's file is "
                        "0600 (chmod 600)")
        return None
    if not secret:
        problems.append(f"{where}: {key}: {path}: empty")
        return None
    return secret


def _postgresql_conninfo(section, where, problems):
    """The libpq connection string of ``[storage]``, its password merged in (problems appended)."""
    try:
        from psycopg import conninfo
    except ImportError:
        problems.append(f"{where}: storage.backend: postgresql needs psycopg (pip install 'bridge[postgresql]')")
        return None
    if bool(section.postgresql_dsn) == bool(section.postgresql_dsn_file):
        problems.append(f"{where}: storage: backend postgresql needs one of postgresql_dsn and postgresql_dsn_file")
        return None
    key = "storage.postgresql_dsn_file" if section.postgresql_dsn_file else "storage.postgresql_dsn"
    text = (_secret_file(where, key, section.postgresql_dsn_file, problems) if section.postgresql_dsn_file
            else section.postgresql_dsn)
    if text is None:
        return None
    try:
        parts = conninfo.conninfo_to_dict(text)
    except Exception as error:  # psycopg.ProgrammingError: libpq's words for what is wrong
        problems.append(f"{where}: {key}: not a PostgreSQL connection string: {str(error).strip()}")
        return None
    if "password" in parts and not section.postgresql_dsn_file:
        problems.append(f"{where}: {key}: must not hold a password: use postgresql_password_file, "
                        "or postgresql_dsn_file (0600)")
        return None
    if section.postgresql_password_file:
        password = _secret_file(where, "storage.postgresql_password_file", section.postgresql_password_file,
                                problems)
        if password is None:
            return None
        parts["password"] = password
    return conninfo.make_conninfo(**parts)


def _missing_files(config, where):
    """The certificates, keys and CA files named but not readable, and a TURN secret's file open to others
    or empty: found here rather than when the listener or feature that uses one starts."""
    problems = []
    folder = config.tls.certificates_dir
    if folder and not (os.path.isdir(folder) and os.access(folder, os.R_OK | os.X_OK)):
        reason = "not a readable folder" if os.path.exists(folder) else "no such folder"
        problems.append(f"{where}: tls.certificates_dir: {folder}: {reason}")
    if config.storage.backend == "postgresql":
        _postgresql_conninfo(config.storage, where, problems)
    named = [("tls", config.tls)] + [(name, getattr(config, name)) for name in ("c2s", "s2s", "http", "sip")]
    for name, directory in config.ldap.items():
        if directory.ca_file and not os.access(directory.ca_file, os.R_OK):
            reason = "not readable" if os.path.exists(directory.ca_file) else "no such file"
            problems.append(f"{where}: ldap.{name}.ca_file: {directory.ca_file}: {reason}")
        if directory.bind_password_file:
            _secret_file(where, f"ldap.{name}.bind_password_file", directory.bind_password_file, problems)
    for name, section in named:
        if bool(section.certificate) != bool(section.private_key):
            problems.append(f"{where}: {name}: certificate and private_key go together")
        files = [("certificate", section.certificate), ("private_key", section.private_key)]
        if name == "s2s":
            files.append(("ca_file", section.ca_file))
        for key, file_name in files:
            if file_name and not os.access(file_name, os.R_OK):
                reason = "not readable" if os.path.exists(file_name) else "no such file"
                problems.append(f"{where}: {name}.{key}: {file_name}: {reason}")
    services = config.external_services
    if services.turn_secret_file:
        _secret_file(where, "external_services.turn_secret_file", services.turn_secret_file, problems)
    if config.api.enabled:
        if not config.api.token_file:
            problems.append(f"{where}: api.token_file: must name the file of the API's bearer token")
        else:
            token = _secret_file(where, "api.token_file", config.api.token_file, problems)
            if token is not None and len(token) < MIN_API_TOKEN_CHARS:
                problems.append(f"{where}: api.token_file: {config.api.token_file}: the token must have at least "
                             f"{MIN_API_TOKEN_CHARS} characters (e.g. openssl rand -hex 32)")
    if config.cluster.enabled and config.cluster.password_file:
        _secret_file(where, "cluster.password_file", config.cluster.password_file, problems)
    mux = config.mux_listener
    if mux.endpoints or mux.tls_endpoints:
        if not mux.secret_file:
            problems.append(f"{where}: mux_listener.secret_file: needed when mux_listener has endpoints")
        else:
            _secret_file(where, "mux_listener.secret_file", mux.secret_file, problems)
    return problems


def _resolve_paths(value, base):
    """``value`` with every relative path option made absolute against ``base``."""
    if isinstance(value, dict):
        return {key: _resolve_paths(item, base) for key, item in value.items()}
    if not dataclasses.is_dataclass(value):
        return value
    changes = {}
    for option in dataclasses.fields(value):
        current = getattr(value, option.name)
        if option.metadata.get("path") and current and not os.path.isabs(current):
            changes[option.name] = os.path.join(base, current)
        elif dataclasses.is_dataclass(current) or isinstance(current, dict):
            changes[option.name] = _resolve_paths(current, base)
    return dataclasses.replace(value, **changes)
