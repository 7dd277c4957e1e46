"""Roles of users and API clients, and what each allows (deny by default).

===============  ====  ========  =====  ======  ==============  ================
role             view  download  store  shares  manage users    all institutions
===============  ====  ========  =====  ======  ==============  ================
platform-admin   yes   yes       yes    yes     yes (all)       yes
admin            yes   yes       yes    yes     own institution no
technologist     yes   yes       yes    yes     no              no
radiologist      yes   yes       no     yes     no              no
referring        yes   yes       no     no      no              no
===============  ====  ========  =====  ======  ==============  ================

"view" and "download" reach the studies of the principal's institution (owner or holder).
"""

from __future__ import annotations

PLATFORM_ADMIN = "platform-admin"
ADMIN = "admin"
TECHNOLOGIST = "technologist"
RADIOLOGIST = "radiologist"
REFERRING = "referring"

ROLES = (PLATFORM_ADMIN, ADMIN, TECHNOLOGIST, RADIOLOGIST, REFERRING)

#: What each role allows beyond viewing its institution's studies.
PERMISSIONS: dict[str, frozenset[str]] = {
    PLATFORM_ADMIN: frozenset({"download", "store", "shares", "users", "all-institutions"}),
    ADMIN: frozenset({"download", "store", "shares", "users"}),
    TECHNOLOGIST: frozenset({"download", "store", "shares"}),
    RADIOLOGIST: frozenset({"download", "shares"}),
    REFERRING: frozenset({"download"}),
}


def check_role(role: str) -> str:
    """``role`` if it is one of :data:`ROLES`; ValueError otherwise."""
    if role not in PERMISSIONS:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    return role
