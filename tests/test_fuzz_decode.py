"""Bad images: 500 seeded tries of good, mutated and certainly-bad files through the reader,
then a small end-to-end extraction. Targets: 0 crashes, 0 hangs, every good file kept, every bad
file one error row with its code. benchmarks/fuzz_decode.py runs 10,000 tries."""

import warnings
from collections import Counter

import pytest

from featx.io.decode import ERROR_CODES
from featx.preprocess.config import Preprocess
from tests.conftest import TINY
from tests.fuzz_corpus import BAD_KINDS, GOOD_FORMATS, cases, decode_outcome, judge, materialise

PREPROCESS = Preprocess(73, 64, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TIME_LIMIT_S = 5.0


@pytest.fixture
def short_time_limit(monkeypatch):
    import featx.io.decode

    monkeypatch.setattr(featx.io.decode, "FILE_TIME_LIMIT_S", TIME_LIMIT_S)


def test_500_tries_no_crash_no_hang_good_kept_bad_reported(tmp_path, short_time_limit):
    tries = cases(500, seed=0)
    assert {c.detail for c in tries if c.kind == "good"} == set(GOOD_FORMATS)
    assert {c.detail for c in tries if c.kind == "bad"} == set(BAD_KINDS)
    misses, outcomes = [], Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF blocks; the outcome is what counts
        for case in tries:
            outcome = decode_outcome(materialise(case, tmp_path), PREPROCESS)
            outcomes[(case.kind, outcome.status)] += 1
            why = judge(case, outcome, hang_after_s=TIME_LIMIT_S + 2)
            if why:
                misses.append(f"{case.name}: {why}")
    assert misses == []
    # the corpus really exercises both sides: mutated files that still decode, and ones that fail
    assert outcomes[("mutated", "ok")] > 10 and sum(n for (k, s),
                                                    n in outcomes.items() if k == "mutated" and s != "ok") > 50


def test_end_to_end_extract_keeps_good_files_and_reports_each_bad_one(tmp_path, short_time_limit):
    from featx.extract.job import extract

    folder = tmp_path / "corpus"
    folder.mkdir()
    good = [c for c in cases(300, seed=1) if c.kind == "good"][:len(GOOD_FORMATS)]
    bad = {c.detail: c for c in cases(300, seed=1) if c.kind == "bad"}
    assert set(bad) == set(BAD_KINDS)
    expected = {}
    for case in good:
        expected[materialise(case, folder, seed=1).name] = {"ok"}
    from tests.fuzz_corpus import BAD_CODES

    for kind, case in bad.items():
        expected[materialise(case, folder, seed=1).name] = BAD_CODES[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = extract(folder, tmp_path / "store", **TINY)
    meta = store.meta
    got = dict(zip(meta["path"].map(lambda p: p.rsplit("/", 1)[-1]), meta["status"]))
    assert set(got) == set(expected)  # one row per entry: none skipped, none doubled
    wrong = {name: status for name, status in got.items() if status not in expected[name]}
    assert wrong == {}
    assert set(meta["status"]) <= {"ok", *ERROR_CODES}
    assert meta.loc[meta["status"] != "ok", "error"].notna().all()
    X = store.features()
    ok = (meta["status"] == "ok").to_numpy()
    assert ok.sum() == len(GOOD_FORMATS) and (X[ok] == X[ok]).all()  # finite vectors for the good files
