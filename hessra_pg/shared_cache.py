"""Moved to hessra_pg.plpython.shared_decisions in 0.3.0; this alias stays for one release."""

import sys
import warnings

from hessra_pg.plpython import shared_decisions as _moved

warnings.warn("hessra_pg.shared_cache moved to hessra_pg.plpython.shared_decisions", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
