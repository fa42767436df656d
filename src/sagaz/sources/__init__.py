"""The sources: one module per kind (a subpackage where a source has helpers).

A source turns a broker, a schedule, an HTTP endpoint or a directory into
:class:`~sagaz.events.Delivery` objects handed to ``emit``; it knows nothing of sagas or of the
engine. The engine imports a source module by its kind only when it starts
(:mod:`sagaz.engine.loading`), and the module imports its broker driver only then.
"""
