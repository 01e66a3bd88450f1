"""DNS SRV lookups (RFC 2782), shared by federation (s2s) and the SIP gateway (RFC 3263).

Both look a domain's services up the same way: a static route of their own
configuration first (each section has its own syntax for it), then the SRV
records of one or more service names, queried together and merged, then a
fallback to the domain itself on the protocol's default port.  What they
share is here: the resolver (``dns_server`` of their section, else the
system's) and the merged SRV lookup.
"""

from twisted.internet import defer
from twisted.names import client as dns_client, dns, error as dns_error

# What a lookup that found nothing usable may fail with: no such name, a refusal, a server failure, a timeout.
LOOKUP_ERRORS = (dns_error.DomainError, dns_error.DNSNameError, dns_error.DNSServerError, defer.TimeoutError,
                 dns_error.DNSQueryRefusedError, dns_error.DNSNotImplementedError, dns_error.DNSUnknownError)


def make_resolver(dns_server=""):
    """A twisted.names resolver: the server at ``HOST:PORT`` when given, else the system's (resolv.conf)."""
    if dns_server:
        host, _, port = dns_server.rpartition(":")
        return dns_client.createResolver(servers=[(host.strip("[]"), int(port))])
    return dns_client.getResolver()


@defer.inlineCallbacks
def lookup_srv(resolver, name):
    """The SRV records (``dns.Record_SRV``) of ``name``; [] when there are none or the lookup failed."""
    try:
        answers, _, _ = yield resolver.lookupService(name)
    except LOOKUP_ERRORS:
        return []
    return [answer.payload for answer in answers if answer.type == dns.SRV]


@defer.inlineCallbacks
def services(resolver, names):
    """The targets of the SRV records of every name of ``names``, looked up together and merged.

    A list of ``(index of the name in names, target host, port)`` ordered by
    priority, then weight (heaviest first: a simplification of RFC 2782's
    weighted choice), then the order of ``names``; [] when there is no
    record at all (the caller falls back to the domain itself); None when
    records exist but none is usable: a single target "." says the service
    is not offered there (RFC 2782).
    """
    found = yield defer.gatherResults([lookup_srv(resolver, name) for name in names])
    records = sorted((record.priority, -record.weight, index, str(record.target), record.port)
                     for index, answers in enumerate(found) for record in answers)
    usable = [(index, target, port) for _, _, index, target, port in records if target not in ("", ".")]
    if records and not usable:
        return None
    return usable


__all__ = ["LOOKUP_ERRORS", "make_resolver", "lookup_srv", "services"]
