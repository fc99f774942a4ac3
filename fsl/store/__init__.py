"""FeatureStore: features embedded once per product, on disk, memory-mapped; opened or derived by encoder."""
