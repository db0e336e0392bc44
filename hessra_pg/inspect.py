"""Moved to hessra_pg.tokens.inspect in 0.3.0; this alias stays for one release."""

import sys
import warnings

from hessra_pg.tokens import inspect as _moved

warnings.warn("hessra_pg.inspect moved to hessra_pg.tokens.inspect", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
