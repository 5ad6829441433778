"""A game backend in Django for the framework tests: grants written by the ORM in the claim's
transaction (``hooks.grant``), served by gunicorn's worker processes."""
