"""Command line: python -m reprolib.learn_delta --help"""
from . import main

main()
