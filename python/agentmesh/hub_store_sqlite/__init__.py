"""The network hub's default store, :class:`SQLiteBackend` (see :mod:`.store`), in rooms:
``store`` (the store's face), ``writer`` (the writer thread and group commit), ``schema`` (the
file: schema, opening, the lock) and ``directory`` (the directory tables' writes)."""

from agentmesh.hub_store_sqlite.store import SQLiteBackend

__all__ = ["SQLiteBackend"]
