"""Institutions, people and machines, and what each may do (issue 6; see docs/access.md).

- ``roles``: the roles and what each allows.
- ``accounts``: institutions, users (argon2id passwords, sign-in with lockout, signed session
  cookies), API keys, and the principals they become.
- ``visibility``: which studies an institution may see (``study_access``), for checks and for
  filtering queries.
"""
