"""Raises while being imported: starting a persistent worker on it must fail with this error."""

raise RuntimeError("broken_import: refusing to be imported")
