"""The event pipeline: admission, backpressure queue, dispatcher, runner, settlement."""
