"""Moved to hessra_pg.admin.doctor in 0.3.0; this alias stays for one release."""

import sys
import warnings

from hessra_pg.admin import doctor as _moved

warnings.warn("hessra_pg.doctor moved to hessra_pg.admin.doctor", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
