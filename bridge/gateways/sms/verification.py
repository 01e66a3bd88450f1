"""Proof that a mobile number is a user's: a code sent by SMS to the number, sent back from the user's account.

The sender ID of an SMS is not authenticated (an SMSC, an aggregator or a
SIM box can write any), and a number in a vCard or set by an administrator
is only a claim.  So a number does what touches the user's identity (an SMS
from it said by the user, STOP from it opting the user out, notifications
sent to it) only once it is *verified*: the user asked for a code from their
XMPP account, the code went by SMS to that number, and the same account sent
it back within ``verification_code_lifetime_minutes``.  A user's document
(``sms-verification``, (host, user)) holds the verified number, the code
waiting (number, code, expiry, wrong tries) and the codes asked for today;
the verified number counts only while it is still the user's number
(``NotificationPreferences.mobile``), so changing the number unverifies it.
"""

import hmac
import secrets

from twisted.internet import defer

from bridge.core.storage.cache import KeyedLock
from bridge.gateways.sms.text import normalize_number

STORE = "sms-verification"  # (host, user): {"number", "pending": {...}, "day", "codes"}
CODE_DIGITS = 6


class Verification:
    def __init__(self, storage, clock, config, preferences):
        self.storage = storage
        self.clock = clock
        self.config = config
        self.preferences = preferences
        self._changes = KeyedLock()

    @defer.inlineCallbacks
    def verified_number(self, host, user):
        """The user's mobile number when it is verified (by a code, or set by the host's directory),
        else None."""
        number = normalize_number((yield self.preferences.mobile(host, user)))
        if number is None:
            return None
        document = yield self.storage.get(host, user, STORE)
        if document and document.get("number") == number:
            return number
        return number if normalize_number((yield self.preferences.assigned_mobile(host, user))) == number else None

    def issue(self, host, user, number, send):
        """A new code for ``number``, within the codes a user may ask for a day.

        ``send(code)`` (a Deferred: None when the code is on its way, else a
        refusal text) runs before the code is kept; the result is (code, None)
        or (None, the reason there is none).
        """
        return self._changes.run((host, user), self._issue, host, user, number, send)

    @defer.inlineCallbacks
    def _issue(self, host, user, number, send):
        document = (yield self.storage.get(host, user, STORE)) or {}
        today = int(self.clock.seconds() // 86400)
        asked = document.get("codes", 0) if document.get("day") == today else 0
        limit = self.config.verification_codes_per_day_per_user
        if asked >= limit:
            return None, f"No more codes today ({limit} a day): try again after 00:00 UTC."
        code = f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"
        refusal = yield send(code)
        if refusal is not None:
            return None, refusal
        expires = self.clock.seconds() + self.config.verification_code_lifetime_minutes * 60
        document.update(day=today, codes=asked + 1,
                        pending={"number": number, "code": code, "expires": expires, "tries": 0})
        yield self.storage.set(host, user, STORE, document)
        return code, None

    def check(self, host, user, code):
        """(the number now verified, None) when ``code`` is the one waiting, else (None, why not)."""
        return self._changes.run((host, user), self._check, host, user, code)

    @defer.inlineCallbacks
    def _check(self, host, user, code):
        document = (yield self.storage.get(host, user, STORE)) or {}
        pending = document.get("pending")
        if pending is None or pending["expires"] <= self.clock.seconds():
            if pending is not None:
                del document["pending"]
                yield self.storage.set(host, user, STORE, document)
            return None, "No code is waiting: send 'verify' for one."
        if hmac.compare_digest(pending["code"].encode(), code.encode()):
            document["number"] = pending["number"]
            del document["pending"]
            yield self.storage.set(host, user, STORE, document)
            return pending["number"], None
        pending["tries"] += 1
        left = self.config.verification_tries_per_code - pending["tries"]
        if left <= 0:
            del document["pending"]
            why = "Wrong code, and no tries left: send 'verify' for a new code."
        else:
            why = f"Wrong code: {left} {'try' if left == 1 else 'tries'} left."
        yield self.storage.set(host, user, STORE, document)
        return None, why
