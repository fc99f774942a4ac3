"""What users run on top of the harness: predict, the support folders behind it, search, the demo, quickstart."""
