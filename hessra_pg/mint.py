"""Moved to hessra_pg.tokens.mint in 0.3.0; this alias stays for one release."""

import sys
import warnings

from hessra_pg.tokens import mint as _moved

warnings.warn("hessra_pg.mint moved to hessra_pg.tokens.mint", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
