"""Integrations: leaves that import the core (``Prompter``, results, errors), never imported by it.

Each module here needs an optional extra and imports it lazily, failing with a ``MissingExtraError`` that
names the extra when it is not installed.
"""
