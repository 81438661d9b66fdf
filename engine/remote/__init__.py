"""Workers on other machines: ``python -m engine worker --server URL --token TOKEN`` (``worker``) and its
HTTP client for the dashboard's API (``client``). The dashboard's side is ``engine.api_workers``."""
