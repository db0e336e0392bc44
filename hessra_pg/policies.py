"""Moved to hessra_pg.rls.policies in 0.3.0; this alias stays for one release."""

import sys
import warnings

from hessra_pg.rls import policies as _moved

warnings.warn("hessra_pg.policies moved to hessra_pg.rls.policies", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
