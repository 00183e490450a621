"""Exceptions of the database package. The CLI catches `DatabaseError` once."""


class DatabaseError(Exception):
    """A measurement or non-ideality file could not be read or written."""


class SchemaError(DatabaseError):
    """A file is not ours, is truncated, has a newer format version or inconsistent content."""
