"""kvmhooks' tests: unit, system, e2e and packaging tests, and the lab package they share.

A package so that the test support is importable as ``tests.lab`` from the repository root,
by pytest, ``python -m demo`` and ``python -m bench`` alike.
"""
