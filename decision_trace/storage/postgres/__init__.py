"""The PostgreSQL backend: one ledger for a whole team (``pip install
'decision-trace-otel[postgres]'``). See ``docs/postgres.md``.

Importing this package imports psycopg; :func:`decision_trace.storage.open_ledger`
imports it only for a ``postgresql://`` URL, so SQLite users need neither.
"""

from __future__ import annotations

from .ledger import PostgresLedger

__all__ = ["PostgresLedger"]
