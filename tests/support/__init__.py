"""Helpers that test modules in several folders share (``pythonpath`` in pyproject.toml puts tests/ on
sys.path, so ``from support.faults import cut``); the tiny configs and fixtures stay in conftest.py."""
