#!/usr/bin/env python
"""Django's command-line utility for administrative tasks (``salvo-admin`` once installed)."""

from config.manage import main

if __name__ == "__main__":
    main()
