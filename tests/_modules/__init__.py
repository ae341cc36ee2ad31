"""Modules the persistent-worker and service tests import in workers (never by the tests themselves, unless said)."""
