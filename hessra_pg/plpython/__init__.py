"""What runs inside the database backend (installed into the server's Python
with the verifier core): the runtime (configuration freshness, caches, time)
and one thin entry module per extension ABI version (abi_0_3 for 0.3.0;
hessra_pg.plpython.abi_0_2 and hessra_pg.plpython.abi_0_1 keep 0.2.0's and 0.1.0's)."""


class imports_without_gc:
    """The imports of an entry module, with the cyclic garbage collector
    paused: in a new backend they allocate objects that all live as long as
    the backend, and the collections those allocations trigger find nothing
    to free (~0.6 ms of a connection's first verification, issue 12).
    Nested uses, and a collector someone else turned off, are left alone."""

    __slots__ = ("paused",)

    def __enter__(self) -> None:
        import gc

        self.paused = gc.isenabled()
        if self.paused:
            gc.disable()

    def __exit__(self, *exc_info: object) -> None:
        if self.paused:
            import gc

            gc.enable()
