"""``dspydantic.pipeline``: batching extraction queue for asyncio apps; see
:mod:`dspydantic.integrations.pipeline`."""

from .integrations.pipeline import BatchQueue, QueueClosedError

__all__ = ["BatchQueue", "QueueClosedError"]
