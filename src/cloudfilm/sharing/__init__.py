"""Cloud film links: tokens that reach some studies of one patient, with codes and lockout.

``links`` issues, finds, renews and revokes shares; ``principals`` turns a token in a URL into
the request's principal; ``pages`` and ``api`` are the HTTP doors; ``cli`` the commands.
See docs/sharing.md for the security model.
"""
