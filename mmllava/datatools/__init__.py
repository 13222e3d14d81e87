"""Data tools behind ``mmllava data``, ``check-dataset``, ``log-dataset`` and ``eval``: repeating
and converting data sets, inspecting a config's training data, evaluating a model on a data file."""
