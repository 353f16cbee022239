"""Runs Ironic's single-process service with SQLite write transactions that wait their turn.

oslo.db opens every SQLite transaction with a deferred BEGIN. A transaction that reads and
then writes while another connection has written since its read cannot take the write lock
without a deadlock, so SQLite fails it at once with "database is locked" (the busy timeout
never applies), and Ironic answers 500 for volume target and connector writes (it retries
such failures only for node updates). Parallel tests against one Ironic hit this now and
then. Here every transaction begins IMMEDIATE: it takes the write lock up front, waiting
for it under the connection's busy timeout, so concurrent writers queue instead of failing.
Ironic itself is unchanged; only how its SQLite transactions begin.
"""

import sys

import sqlalchemy
from sqlalchemy.engine import Engine


@sqlalchemy.event.listens_for(Engine, "begin")
def _begin_immediate(conn):
    # Runs before oslo.db's own "begin" listener (class-level listeners run first); oslo.db
    # sees the marker it uses itself and does not emit its deferred BEGIN.
    if conn.dialect.name == "sqlite" and "in_transaction" not in conn.info:
        conn.execute(sqlalchemy.text("BEGIN IMMEDIATE"))
        conn.info["in_transaction"] = True


if __name__ == "__main__":
    from ironic.command.singleprocess import main

    sys.argv[0] = "ironic"
    sys.exit(main())
