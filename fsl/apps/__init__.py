"""What users run: predict, the Python API, the support folders behind them, search, the demo (each answering
through fsl/inference), and quickstart (the research job end to end)."""
