"""Which columns of ``users`` a sync may write. Propose checks an order's fields (and its ``field_map``
targets) against this, and apply and revert check again (the table or the config may have changed), so
nothing user-supplied reaches SQL text except as a checked, quoted identifier.

A column may be written when it exists, is not ``id``, is not a provenance column
(``<field>_updated_from`` / ``<field>_updated_at``), is not matched by the config's ``deny_fields``,
and then:

* with ``[target] allow_fields`` set: when it is in that list (case-insensitive). The list is the only
  one that may be written; the default deny-list below is not consulted for the columns it names, so
  an operator can allow a column the patterns would refuse by naming it there.
* otherwise: when no pattern of the **default deny-list** matches it.

The default deny-list matches a column name by its *words*: the name is split at underscores, other
punctuation and camelCase humps, lower-cased, and a word's trailing digits are dropped
(``userPassword2`` → ``user``, ``password``). A category matches when one of its words is a word of the
name, one of its word sequences appears in order (``access_level``), or one of its stems appears
anywhere in the name with the separators removed (``userpassword``, ``emailVerified``):

=====================  ==================================================================================
category               matches (words; *stems*; word sequences)
=====================  ==================================================================================
credentials            pwd pass passphrase pin pins hash hashed salt cred creds; *password passwd passcode
                       passphrase secret credential pincode*
keys                   key keys cert certs certificate certificates; *apikey privatekey privkey
                       signingkey secretkey accesskey sshkey encryptionkey*
tokens                 jwt bearer nonce csrf xsrf cookie cookies auth oauth authn authz sso saml ldap;
                       *token authenticat authoriz*
one-time codes         otp totp hotp mfa 2fa tfa twofa recovery; *onetime twofactor backupcode*;
                       one time · backup codes
sessions               session; *sessionid sessiontoken sessionkey*
roles                  staff root sudo sudoer sudoers; *admin role superuser superadmin*
privileges             priv privs privileged acl acls clearance entitlement entitlements capability
                       capabilities grant grants rights; *privilege*; access level(s) · access rights ·
                       access control · access list
permissions            perm perms; *permission*
scopes                 scope scopes
groups                 group groups membership memberships; member of
ownership              owner owners ownership owned tenant tenants tenancy
verification flags     verify confirmed unconfirmed confirmation locked lockout banned suspended;
                       *verified verification*
=====================  ==================================================================================

So ``pwd``, ``passcode``, ``pin``, ``private_key``, ``signing_key``, ``credentials``, ``otp_seed``,
``totp``, ``recovery_codes``, ``session_id``, ``privileges``, ``access_level``, ``scopes``, ``groups``,
``mfa_enabled``, ``email_verified`` and ``owner_id`` are all refused, while ``email``, ``phone``,
``company``, ``sessions`` (a count), ``last_access_at``, ``passport_number``, ``pinned_at``,
``keyword`` and ``zip_code`` may be synced. The list is broad on purpose: a false refusal costs an
operator one line of ``allow_fields``; a false allowance lets a source write a password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ...errors import Invalid
from ...store.target import check_users_table
from ...store.base import Connection

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
# Provenance columns (workctl.types.user_data_sync.provenance): bookkeeping, never a syncable field.
FROM_SUFFIX = "_updated_from"
AT_SUFFIX = "_updated_at"
SUFFIXES = (FROM_SUFFIX, AT_SUFFIX)


@dataclass(frozen=True)
class Category:
    name: str
    words: frozenset[str] = frozenset()
    stems: tuple[str, ...] = ()
    sequences: tuple[tuple[str, ...], ...] = ()


def _c(name: str, words: str = "", stems: str = "", sequences: Iterable[str] = ()) -> Category:
    return Category(name, frozenset(words.split()), tuple(stems.split()), tuple(tuple(s.split()) for s in sequences))


DENY_CATEGORIES: tuple[Category, ...] = (
    _c("credentials", "pwd pass passphrase pin pins hash hashed salt cred creds",
       "password passwd passcode passphrase secret credential pincode"),
    _c("keys", "key keys cert certs certificate certificates",
       "apikey privatekey privkey signingkey secretkey accesskey sshkey encryptionkey"),
    _c("tokens", "jwt bearer nonce csrf xsrf cookie cookies auth oauth authn authz sso saml ldap",
       "token authenticat authoriz"),
    _c("one-time codes", "otp totp hotp mfa 2fa tfa twofa recovery", "onetime twofactor backupcode",
       ["one time", "backup codes"]),
    _c("sessions", "session", "sessionid sessiontoken sessionkey"),
    _c("roles", "staff root sudo sudoer sudoers", "admin role superuser superadmin"),
    _c("privileges", "priv privs privileged acl acls clearance entitlement entitlements capability capabilities "
       "grant grants rights", "privilege",
       ["access level", "access levels", "access rights", "access control", "access list"]),
    _c("permissions", "perm perms", "permission"),
    _c("scopes", "scope scopes"),
    _c("groups", "group groups membership memberships", "", ["member of"]),
    _c("ownership", "owner owners ownership owned tenant tenants tenancy"),
    _c("verification flags", "verify confirmed unconfirmed confirmation locked lockout banned suspended",
       "verified verification"),
)

_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[^a-z0-9]+")


def words(name: str) -> list[str]:
    """A column name as lower-case words: split at punctuation and camelCase, trailing digits dropped."""
    found = []
    for word in _SEPARATORS.split(_HUMP.sub("_", name).lower()):
        stripped = word.rstrip("0123456789") or word
        if stripped:
            found.append(stripped)
    return found


def deny_reason(name: str) -> str | None:
    """The default deny-list's verdict on a column name: the category and what matched, or None."""
    parts = words(name)
    glued = "".join(parts)
    for category in DENY_CATEGORIES:
        hit = next((w for w in parts if w in category.words), None)
        hit = hit or next((s for s in category.stems if s in glued), None)
        if hit is None:
            for seq in category.sequences:
                if any(tuple(parts[i:i + len(seq)]) == seq for i in range(len(parts) - len(seq) + 1)):
                    hit = " ".join(seq)
                    break
        if hit is not None:
            return f"{category.name} ('{hit}')"
    return None


def is_provenance_column(name: str) -> bool:
    """``<field>_updated_from`` / ``<field>_updated_at``."""
    return name.lower().endswith(SUFFIXES)


@dataclass(frozen=True)
class FieldRules:
    """The config's say on writable columns: ``deny_fields`` (substrings, added to the patterns) and
    ``[target] allow_fields`` (when set, the only columns that may be written)."""

    deny: tuple[str, ...] = ()
    allow: frozenset[str] | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> FieldRules:
        extra = settings.get("deny_fields", ())
        if isinstance(extra, str) or not isinstance(extra, (list, tuple)) or not all(isinstance(x, str) for x in extra):
            raise Invalid('config: [types."user.data.sync"] deny_fields must be a list of strings',
                          code="config_invalid")
        allow = (settings.get("target_config") or {}).get("allow_fields")
        if allow is not None:
            if isinstance(allow, str) or not isinstance(allow, (list, tuple)) or \
                    not all(isinstance(x, str) and re.match(IDENTIFIER, x) for x in allow):
                raise Invalid("config: [target] allow_fields must be a list of column names", code="config_invalid")
            return cls(tuple(d.lower() for d in extra), frozenset(a.lower() for a in allow))
        return cls(tuple(d.lower() for d in extra), None)

    def why_not(self, column: str) -> str | None:
        """Why a sync may not write this column (None: it may), not counting whether it exists."""
        lowered = column.lower()
        if lowered == "id":
            return "the key"
        if not re.match(IDENTIFIER, column):
            return "not a plain identifier"
        if is_provenance_column(column):
            return "a provenance column"
        configured = next((d for d in self.deny if d in lowered), None)
        if configured is not None:
            return f"matches deny_fields ('{configured}')"
        if self.allow is not None:
            return None if lowered in self.allow else "not in [target] allow_fields"
        reason = deny_reason(column)
        return None if reason is None else f"on the default deny-list: {reason}"


def allowed_columns(conn: Connection, rules: FieldRules | None = None) -> list[str]:
    """Columns of ``users`` that a sync may write (after checking ``users`` is a table with a unique id)."""
    rules = rules or FieldRules()
    return [c.name for c in check_users_table(conn).values() if rules.why_not(c.name) is None]


def refusal_message(name: str, rules: FieldRules, existing: Iterable[str], allowed: list[str]) -> str:
    """Why ``name`` cannot be an order's field, for the error details (with the allowed columns)."""
    if name.lower() not in {c.lower() for c in existing}:
        why = "not a column of users"
    else:
        why = rules.why_not(name) or "not writable"
    return f"'{name}' is not a column the sync may write: {why} (allowed: {', '.join(allowed) or 'none'})"
