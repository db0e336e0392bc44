"""Extension 0.2.0's PL/Python bodies import this name: an alias of
hessra_pg.plpython.abi_0_2 (kept while such databases may exist)."""

import sys

from hessra_pg.plpython import abi_0_2

sys.modules[__name__] = abi_0_2
