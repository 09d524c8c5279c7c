"""volfnet.parallel: order, error surfacing, collected user errors."""

import pickle

import pytest

from volfnet.errors import DataIntegrityError, VolfnetError
from volfnet.parallel import parallel_map, parallel_starmap


def fail_on_two(value: int) -> int:
    if value == 2:
        raise ValueError(f"cannot handle {value}")
    return value * 10


def user_error_on_odd(value: int, prefix: str) -> str:
    if value % 2:
        raise VolfnetError(f"{prefix}{value}.nii.gz: bad file")
    return f"{prefix}{value}"


def test_results_keep_input_order_in_workers():
    assert parallel_map(fail_on_two, [5, 1, 3, 4], num_workers=2, progress=False) == [50, 10, 30, 40]


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_exception_keeps_type_message_and_names_the_item(workers):
    with pytest.raises(ValueError, match="cannot handle 2") as info:
        parallel_map(fail_on_two, [1, 2, 3], num_workers=workers, progress=False)
    assert "working on 2" in "".join(info.value.__notes__)


def test_user_errors_are_collected_into_one_report():
    with pytest.raises(DataIntegrityError) as info:
        parallel_starmap(user_error_on_odd, [(1, "case"), (2, "case"), (3, "case")], num_workers=2, desc="evaluation", collect_user_errors=True)
    assert info.value.problems == ["case1.nii.gz: bad file", "case3.nii.gz: bad file"]
    assert "evaluation failed (2 problem(s))" in str(info.value)


def test_zero_workers_is_a_user_error():
    with pytest.raises(VolfnetError, match="at least 1, got 0"):
        parallel_map(fail_on_two, [1], num_workers=0)


def test_integrity_error_survives_pickling():
    error = DataIntegrityError(["a.nii.gz: broken", "b.nii.gz: NaN"], header="check failed")
    copy = pickle.loads(pickle.dumps(error))
    assert copy.problems == error.problems and str(copy) == str(error)
