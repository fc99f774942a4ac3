"""Dumps into a Catalog: read and clean styles.csv, the prepared catalog, the synthetic sample, download."""
