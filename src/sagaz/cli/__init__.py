"""The ``sagaz`` command (:mod:`sagaz.cli.main`): ``run``, ``triggers``, ``sagas``, ``dlq``,
``db``; one module per command."""
