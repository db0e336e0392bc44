"""Moved to hessra_pg.tokens.identity in 0.3.0; this alias stays for one release."""

import sys
import warnings

from hessra_pg.tokens import identity as _moved

warnings.warn("hessra_pg.identity moved to hessra_pg.tokens.identity", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
