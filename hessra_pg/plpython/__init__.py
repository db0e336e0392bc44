"""What runs inside the database backend (installed into the server's Python
with the verifier core): the runtime (configuration freshness, caches, time)
and one thin entry module per extension ABI version (abi_0_3 for 0.3.0;
hessra_pg.plpython.abi_0_2 and hessra_pg.plpython.abi_0_1 keep 0.2.0's and 0.1.0's)."""
