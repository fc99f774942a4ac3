from __future__ import annotations

from fsl.data.prepared import load_catalog
from fsl.data.sample import SAMPLE_CLASSES, make_sample_catalog


def test_sample_catalog_is_a_valid_deterministic_dump(tmp_path):
    a = load_catalog(make_sample_catalog(tmp_path / "a", per_class=20))
    b = load_catalog(make_sample_catalog(tmp_path / "b", per_class=20))
    assert len(a) == 20 * len(SAMPLE_CLASSES) and a.report.empty
    assert a.labels().value_counts().eq(20).all()
    assert a.fingerprint == b.fingerprint
