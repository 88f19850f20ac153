"""``dspydantic.store``: extraction results in a SQL database, the review queue and the loop back into
``optimize()`` (``pip install 'dspydantic[db]'``). See :mod:`dspydantic.integrations.store`."""

from .integrations.store import ExtractionStore, StoredDocument

__all__ = ["ExtractionStore", "StoredDocument"]
