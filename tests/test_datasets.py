"""The vendored datasets (blockfp8.datasets): checksums, row counts, parsing, and a corrupt file named."""

import gzip
import shutil

import pytest

from blockfp8 import datasets as data
from blockfp8.eval import tasks


def test_vendored_files_match_their_checksums_and_row_counts():
    for spec in data.DATA_FILES.values():
        path = data.data_path(spec.task)
        assert data.sha256_file(path) == spec.sha256, path
    items, shots = data.load_gsm8k()
    assert len(items) == 1319 and [it.id for it in items] == list(range(1319))
    assert len(shots) == tasks.MAX_FEWSHOT
    assert all(s.answer.rstrip(".").split("So the answer is ")[-1].isdigit() for s in shots)
    lam = data.load_lambada()
    assert len(lam) == 5153 and all(it.target and " " not in it.target for it in lam)


def test_gsm8k_labels_parse_commas_and_signs():
    items, _ = data.load_gsm8k()
    by_id = {it.id: it for it in items}
    assert by_id[0].label == 18
    assert sum(it.label < 0 for it in items) == 2  # two negative answers: the reason the sign is kept
    assert max(it.label for it in items) > 1_000_000  # e.g. "1,450,000"
    assert all(it.answer.rsplit("####", 1)[1].strip().replace(",", "") == str(it.label) for it in items)


def test_corrupt_data_file_is_rejected_with_its_name(tmp_path):
    spec = data.DATA_FILES["lambada"]
    shutil.copy(data.data_path("lambada"), tmp_path / spec.filename)
    with gzip.open(tmp_path / spec.filename, "ab") as f:
        f.write(b'{"extra": 1}\n')
    with pytest.raises(data.DataError, match=r"lambada_openai_test\.jsonl\.gz: sha256"):
        data.load_lambada(tmp_path)
    with pytest.raises(data.DataError, match="missing"):
        data.load_gsm8k(tmp_path)
    with pytest.raises(data.DataError, match="not found"):
        data.load_gsm8k(tmp_path / "nowhere")
