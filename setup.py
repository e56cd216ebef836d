"""Shim so Dataflow's --setup_file can build and ship beamvec to its workers.

All metadata lives in pyproject.toml.
"""

from setuptools import setup

setup()
