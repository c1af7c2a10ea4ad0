"""The ACL file: which topics and queues each client may read and write.

Grammar, one statement a line (``#`` starts a comment line, blank lines are skipped;
a line with more words than its statement takes is refused, naming the line, so a
comment written after a statement cannot silently become part of a name)::

    user NAME                            rules below apply to the user NAME
    anonymous                            rules below apply to clients without a user name
    topic [ACCESS] FILTER                an MQTT topic filter (STOMP /topic/<FILTER>)
    pattern [ACCESS] FILTER              a topic filter for every client, with %u and %c
    queue [ACCESS] NAME                  a named queue (STOMP /queue/NAME, AMQP queue NAME)

ACCESS is ``read``, ``write``, ``readwrite`` (the default when left out) or ``deny``;
NAME and FILTER are one word each (no whitespace).
``topic`` and ``queue`` lines before the first ``user`` or ``anonymous`` line apply to
every client (unlike Mosquitto, where they are the anonymous clients' rules; here a
section of its own, ``anonymous``, holds those). ``pattern`` lines apply to every
client wherever they stand. In ``pattern`` and ``queue`` lines ``%u`` is replaced by the
client's user name and ``%c`` by its client id (STOMP: the ``client-id`` header, else
the session id); a rule naming ``%u`` does not apply to an anonymous client, and a rule
is skipped for a client whose substituted value holds a wildcard (``+``, ``#``, ``*``).
A queue NAME may use ``*`` for any run of characters (``jobs.*``).

Decisions, with an ACL file configured (without one everything is allowed):

- PUBLISH to topic T (and a will): allowed when a ``write`` or ``readwrite`` filter
  matches T and no ``deny`` filter matches T.
- SUBSCRIBE to filter F: allowed when one ``read`` or ``readwrite`` filter covers F
  (matches every topic F matches: ``a/#`` covers ``a/b/+``, ``a/+`` does not cover
  ``a/#``) and no ``deny`` filter overlaps F (matches a topic F matches too). Retained
  messages sent on subscribe fall under the same check.
- Queue write (STOMP SEND to /queue/x) and read (SUBSCRIBE to /queue/x): a matching
  ``queue`` rule of that access and no matching ``queue deny``.

Deny wins over allow; anything not granted is denied.
"""

from dataclasses import dataclass, field
from pathlib import Path

from ..protocols.mqtt.topics import is_valid_topic_filter
from .filters import covers, filter_matches, overlaps

ACCESS = ("read", "write", "readwrite", "deny")
# Clients whose rules are kept resolved (substituted, sorted by access); past this
# many the cache starts again, so that changing client ids cannot grow it without end.
RESOLVED_LIMIT = 10_000


class ACLError(ValueError):
    """A malformed ACL file; the message names the line."""


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str  # "topic" or "queue"
    access: str  # one of ACCESS
    target: str  # a topic filter or a queue name pattern, maybe with %u / %c
    templated: bool = False  # %u and %c are substituted


@dataclass(frozen=True, slots=True)
class Resolved:
    """One client's targets of one kind, by what they allow."""

    deny: tuple[str, ...]
    read: tuple[str, ...]
    write: tuple[str, ...]


@dataclass(slots=True)
class AccessControlList:
    """Parsed rules; ``may_*`` answer for one client (user name or None, client id)."""

    general: list[Rule] = field(default_factory=list)  # every client
    sections: dict[str | None, list[Rule]] = field(default_factory=dict)  # None: anonymous
    _resolved: dict[tuple[str, str | None, str], Resolved] = field(default_factory=dict, repr=False)

    def rules(self, kind: str, user: str | None, client_id: str) -> Resolved:
        """The targets of the rules of ``kind`` that apply to this client."""
        key = (kind, user, client_id)
        resolved = self._resolved.get(key)
        if resolved is None:
            if len(self._resolved) >= RESOLVED_LIMIT:
                self._resolved.clear()
            resolved = self._resolved[key] = self._resolve(kind, user, client_id)
        return resolved

    def _resolve(self, kind: str, user: str | None, client_id: str) -> Resolved:
        targets: dict[str, list[str]] = {access: [] for access in ACCESS}
        for rule in (*self.general, *self.sections.get(user, ())):
            if rule.kind != kind:
                continue
            target = _substitute(rule, user, client_id) if rule.templated else rule.target
            if target is not None:
                targets[rule.access].append(target)
        both = targets["readwrite"]
        return Resolved(tuple(targets["deny"]), tuple(targets["read"] + both),
                        tuple(targets["write"] + both))

    def may_publish(self, user: str | None, client_id: str, topic: str) -> bool:
        rules = self.rules("topic", user, client_id)
        if any(filter_matches(t, topic) for t in rules.deny):
            return False
        return any(filter_matches(t, topic) for t in rules.write)

    def may_subscribe(self, user: str | None, client_id: str, topic_filter: str) -> bool:
        rules = self.rules("topic", user, client_id)
        if any(overlaps(t, topic_filter) for t in rules.deny):
            return False
        return any(covers(t, topic_filter) for t in rules.read)

    def may_use_queue(self, user: str | None, client_id: str, name: str, access: str) -> bool:
        """``access`` is "read" (consume) or "write" (send)."""
        rules = self.rules("queue", user, client_id)
        if any(glob_matches(t, name) for t in rules.deny):
            return False
        return any(glob_matches(t, name) for t in getattr(rules, access))


def _substitute(rule: Rule, user: str | None, client_id: str) -> str | None:
    target = rule.target
    wildcards = "*" if rule.kind == "queue" else "+#"
    if "%u" in target:
        if user is None or any(c in user for c in wildcards):
            return None
        target = target.replace("%u", user)
    if "%c" in rule.target:
        if any(c in client_id for c in wildcards):
            return None
        target = target.replace("%c", client_id)
    return target


def glob_matches(pattern: str, name: str) -> bool:
    """``*`` matches any run of characters (also none); everything else itself."""
    pieces = pattern.split("*")
    if len(pieces) == 1:
        return pattern == name
    first, last = pieces[0], pieces[-1]
    if not name.startswith(first) or len(name) < len(first) + len(last):
        return False
    position = len(first)
    end = len(name) - len(last)
    for piece in pieces[1:-1]:
        found = name.find(piece, position, end)
        if found < 0:
            return False
        position = found + len(piece)
    return name.endswith(last)


def parse_acl(text: str, source: str = "ACL file") -> AccessControlList:
    acl = AccessControlList()
    current: list[Rule] = acl.general
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        keyword, args = words[0], words[1:]
        try:
            if keyword == "user":
                if not args:
                    raise ACLError("user: a name is needed")
                _no_extra_words(keyword, args, 1)
                current = acl.sections.setdefault(args[0], [])
            elif keyword == "anonymous":
                _no_extra_words(keyword, args, 0)
                current = acl.sections.setdefault(None, [])
            elif keyword in ("topic", "pattern", "queue"):
                rule = _rule(keyword, args)
                (acl.general if keyword == "pattern" else current).append(rule)
            else:
                raise ACLError(f"unknown statement {keyword[:30]!r} "
                               "(user, anonymous, topic, pattern, queue)")
        except ACLError as exc:
            raise ACLError(f"{source} line {number}: {exc}") from None
    return acl


def _no_extra_words(keyword: str, args: list[str], allowed: int) -> None:
    # A comment after a statement would otherwise become part of a name or a filter.
    if len(args) > allowed:
        extra = " ".join(args[allowed:])
        raise ACLError(f"{keyword}: unexpected {extra[:60]!r} after the statement "
                       "(comments go on a line of their own)")


def _rule(keyword: str, args: list[str]) -> Rule:
    if len(args) >= 2 and args[0] in ACCESS:
        access, target = args[0], args[1]
        _no_extra_words(keyword, args, 2)
    elif args:
        access, target = "readwrite", args[0]
        _no_extra_words(keyword, args, 1)
    else:
        raise ACLError(f"{keyword}: a {'queue name' if keyword == 'queue' else 'topic filter'} "
                       "is needed")
    templated = keyword in ("pattern", "queue")
    if keyword == "queue":
        return Rule("queue", access, target, templated)
    check = target.replace("%u", "u").replace("%c", "c") if templated else target
    if not is_valid_topic_filter(check):
        raise ACLError(f"{keyword}: invalid topic filter {target[:60]!r}")
    return Rule("topic", access, target, templated)


def load_acl(path: Path) -> AccessControlList:
    """Read and parse an ACL file; OSError or ACLError."""
    return parse_acl(path.read_text(encoding="utf-8"), str(path))
