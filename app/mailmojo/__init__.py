"""Mailmojo as an upstream: contact sync into a Mailmojo list (``contact-sync.md`` §4)."""
