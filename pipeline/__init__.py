"""textclf stage entry points: options, input checks, Beam/Keras wiring, output finalizing."""
