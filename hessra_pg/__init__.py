"""hessra_pg: Hessra capability tokens verified inside PostgreSQL.

Importing this package stays light (no SQLAlchemy, no psycopg): the same code
runs inside the database server's PL/Python interpreter.
"""

__version__ = "0.5.0"
