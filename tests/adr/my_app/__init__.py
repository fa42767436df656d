"""The ADR's ``my_app`` package (ADR-025 "Example Usage"), imported as ``my_app.sagas`` by
``tests/adr/test_multi_broker.py``."""
