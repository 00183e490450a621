"""HDF5 measurement store (raw runs) and the non-ideality database that training consumes."""

from database.errors import DatabaseError, SchemaError
from database.nonideality import NonIdealityDB, load_nonideality, save_nonideality

__all__ = ["DatabaseError", "NonIdealityDB", "SchemaError", "load_nonideality", "save_nonideality"]
