"""Integrations: leaves that import the core (``Prompter``, results, errors), never imported by it.

Each module here needs an optional extra and imports it lazily, failing with a ``MissingExtraError`` that
names the extra when it is not installed.

* ``server`` -- the HTTP service (``create_app``; ``dspydantic serve``), ``[server]``
* ``metrics`` -- Prometheus metrics of extractions and requests, ``[server]``
* ``observe`` -- OpenTelemetry spans per extraction and per LM call, ``[otel]`` (no-op without it)
* ``pipeline`` -- ``BatchQueue``, an asyncio batching queue
* ``extract_files`` -- the file pipeline behind ``dspydantic extract``
* ``routing`` -- ``Fallback`` chains and the ``ABRouter``
"""
