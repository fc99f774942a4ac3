"""What answering a photo needs and nothing more: a head built from a config, its calibration and the
"none of these" scores at answer time, photos checked and embedded, and the one support-set core that
every app answers through. It never imports the harness (tests/test_layout.py)."""
