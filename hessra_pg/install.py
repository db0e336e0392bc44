"""Moved to hessra_pg.admin.install in 0.3.0; this alias stays for one release."""

import sys
import warnings

from hessra_pg.admin import install as _moved

warnings.warn("hessra_pg.install moved to hessra_pg.admin.install", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
