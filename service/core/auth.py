"""Who is calling, and what each role may do (API.md, "Authentication and roles")."""

from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime


class Role(enum.StrEnum):
    ORG = "org"
    INSURER = "insurer"
    INVESTIGATOR = "investigator"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    role: Role
    org: str | None  # set for (and only for) the org role
    name: str | None = None  # who holds the key, when it was given one

    def may_act_for(self, org: str) -> bool:
        """An org key acts only as its own organisation; admin acts as any."""
        return self.role is Role.ADMIN or (self.role is Role.ORG and self.org == org)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key as an admin may see it: never its secret, nor the secret's hash."""

    key_id: str
    role: Role
    org: str | None
    created_at: datetime
    revoked_at: datetime | None  # None while the key is live
    name: str | None = None  # who holds it


def new_key() -> tuple[str, str]:
    """A fresh (key_id, bearer token). The token embeds the id so logs can name a key
    without showing its secret part."""
    key_id = "k_" + secrets.token_hex(8)
    return key_id, f"{key_id}.{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> bytes:
    """What is stored for a token. The token carries 256 random bits, so one round of
    SHA-256 is as good as a slow password hash here and costs microseconds per request."""
    return hashlib.sha256(token.encode()).digest()
