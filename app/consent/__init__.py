"""Consent both ways: status reads of Mailmodo contacts, what they teach, opt-outs carried."""
