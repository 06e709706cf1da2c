"""The exception a file that cannot be read raises (its own module, so that the graph, which
checks tensors against itself, and every reader can raise it without importing each other)."""


class WeightFileError(ValueError):
    """A weight file that cannot be read, or tensors that do not fit the model they describe."""
