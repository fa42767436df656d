"""Options of ``@trigger(source=...)``: checked when a saga class is defined, driver-free."""
