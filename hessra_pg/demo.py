"""Moved to hessra_pg.dev.demo in 0.3.0: `python -m hessra_pg.dev.demo` (this
alias stays for one release)."""

from hessra_pg.dev.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
