"""The verifier core: pure Python, imported by the database backend and by
clients alike (no psycopg, no SQLAlchemy): token encoding, keys, the shape
limits, the protobuf Datalog reader, the verifier, byte-bounded caches."""
