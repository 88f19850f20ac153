"""``dspydantic.server``: the HTTP service (``pip install 'dspydantic[server]'``); see
:mod:`dspydantic.integrations.server`."""

from .integrations.server import app_from_env, create_app, load_prompters, prompter_version

__all__ = ["app_from_env", "create_app", "load_prompters", "prompter_version"]
