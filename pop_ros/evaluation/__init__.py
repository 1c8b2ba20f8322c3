"""The paper's part-pointing evaluation: datasets, episodes, methods, cached predictions, reports.
`evaluate.evaluate` runs the whole of it from Python; `pop-eval` parses arguments into that call."""
