"""Extension 0.1.0's PL/Python bodies import this name: an alias of
hessra_pg.plpython.abi_0_1 (kept while such databases may exist)."""

import sys

from hessra_pg.plpython import abi_0_1

sys.modules[__name__] = abi_0_1
