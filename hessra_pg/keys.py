"""Moved to hessra_pg.core.keys in 0.3.0; this alias stays for one release."""

import sys
import warnings

from hessra_pg.core import keys as _moved

warnings.warn("hessra_pg.keys moved to hessra_pg.core.keys", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
