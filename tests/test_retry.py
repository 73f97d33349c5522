import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.config import Settings
from runner.retry import RetryPolicy


def test_defaults():
    assert RetryPolicy(max_retries=3, base_s=0.5, cap_s=30.0) == RetryPolicy()


def test_from_settings():
    settings = Settings(max_retries=5, retry_base_s=0.1, retry_cap_s=2.0)
    assert RetryPolicy(5, 0.1, 2.0) == RetryPolicy.from_settings(settings)
    assert RetryPolicy(0, 0.1, 2.0) == RetryPolicy.from_settings(settings, max_retries=0)


def test_rejects_negative_values():
    with pytest.raises(ValueError, match=r"^'max_retries' must be >= 0"):
        RetryPolicy(max_retries=-1)


@given(
    retry_number=st.integers(min_value=1, max_value=200),
    r=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    base_s=st.floats(min_value=0.0, max_value=10.0),
    cap_s=st.floats(min_value=0.0, max_value=100.0),
)
def test_full_jitter_stays_within_the_ceiling(retry_number, r, base_s, cap_s):
    policy = RetryPolicy(base_s=base_s, cap_s=cap_s)
    ceiling = min(cap_s, base_s * 2 ** (retry_number - 1))
    delay = policy.delay(retry_number, random=lambda: r)
    assert 0.0 <= delay <= ceiling
    assert pytest.approx(ceiling * r) == delay


def test_delay_grows_exponentially_up_to_the_cap():
    policy = RetryPolicy(base_s=0.5, cap_s=3.0)
    delays = [policy.delay(k, random=lambda: 0.5) for k in range(1, 6)]
    assert [0.25, 0.5, 1.0, 1.5, 1.5] == delays


def test_a_huge_retry_number_is_just_the_cap():
    policy = RetryPolicy(base_s=0.5, cap_s=3.0)
    assert 1.5 == policy.delay(10_000, random=lambda: 0.5)


def test_retry_after_is_honoured():
    policy = RetryPolicy(base_s=0.5, cap_s=30.0)
    assert 2.5 == policy.delay(1, retry_after=2.5, random=lambda: 0.0)
    assert 7.0 == policy.delay(4, retry_after=7.0, random=lambda: 0.0)


def test_retry_after_is_honoured_exactly_above_the_cap():
    # Never earlier than the server asks; waiting too long is `waits_too_long`'s call.
    assert 45.0 == RetryPolicy(cap_s=30.0).delay(1, retry_after=45.0)


@pytest.mark.parametrize(
    ("retry_after", "too_long"), [(None, False), (120.0, False), (120.5, True)]
)
def test_waits_too_long_above_retry_after_max(retry_after, too_long):
    assert too_long == RetryPolicy(retry_after_max_s=120.0).waits_too_long(retry_after)


@pytest.mark.parametrize("retry_after", [0.0, -1.0])
def test_a_non_positive_retry_after_falls_back_to_jitter(retry_after):
    policy = RetryPolicy(base_s=1.0, cap_s=30.0)
    assert 0.5 == policy.delay(1, retry_after=retry_after, random=lambda: 0.5)


def test_retry_numbers_start_at_one():
    with pytest.raises(ValueError, match=r"^retry_number starts at 1, got 0$"):
        RetryPolicy().delay(0)
