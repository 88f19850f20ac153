"""``dspydantic.celery``: Celery workers for saved prompters (``pip install 'dspydantic[celery]'``).
See :mod:`dspydantic.integrations.celery`."""

from .integrations.celery import TransientLMError, WorkerTasks, make_app, make_tasks, threads_per_process

__all__ = ["TransientLMError", "WorkerTasks", "make_app", "make_tasks", "threads_per_process"]
