"""Moved to hessra_pg.core.verifier in 0.3.0; this alias stays for one release."""

import sys
import warnings

from hessra_pg.core import verifier as _moved

warnings.warn("hessra_pg.verify moved to hessra_pg.core.verifier", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
