"""Command line: python -m reprolib.layout --help"""
import sys

from . import main

sys.exit(main())
