"""Moved to hessra_pg.repository.checker in 0.3.0; this alias stays for one release."""

import sys
import warnings

from hessra_pg.repository import checker as _moved

warnings.warn("hessra_pg.config moved to hessra_pg.repository.checker", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
