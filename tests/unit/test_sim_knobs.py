"""Knob validation and the JSON merge behind `POST /sim/config`."""

from __future__ import annotations

import pytest

from sim.knobs import KnobError, Knobs, KnobSet


def test_a_model_override_wins_over_the_global_knobs_only_for_that_model() -> None:
    knob_set = KnobSet(Knobs(latency_ms=10, rpm=600))
    knob_set.apply({"models": {"slow": {"latency_ms": 500, "rpm": None}}})

    assert knob_set.for_model("slow") == Knobs(latency_ms=500, rpm=None)
    assert knob_set.for_model("other") == Knobs(latency_ms=10, rpm=600)


def test_global_changes_show_through_model_overrides_that_do_not_set_them() -> None:
    knob_set = KnobSet()
    knob_set.apply({"models": {"m": {"fail_rate": 1}}})
    knob_set.for_model("m")

    knob_set.apply({"fail_status": 529})

    assert knob_set.for_model("m").fail_status == 529
    assert knob_set.for_model("m").fail_rate == 1


def test_patches_merge_into_existing_overrides_and_null_drops_them() -> None:
    knob_set = KnobSet()
    knob_set.apply({"models": {"a": {"rpm": 60}, "b": {"tpm": 100}}})
    knob_set.apply({"models": {"a": {"latency_ms": 5}}})

    assert knob_set.as_json()["models"] == {"a": {"rpm": 60, "latency_ms": 5}, "b": {"tpm": 100}}
    knob_set.apply({"models": {"a": None}})
    assert knob_set.as_json()["models"] == {"b": {"tpm": 100}}
    knob_set.apply({"models": None})
    assert knob_set.as_json()["models"] == {}


@pytest.mark.parametrize(
    "patch",
    [
        {"fail_rate": 1.5},
        {"fail_status": 302},
        {"fail_status": "slow"},
        {"latency_ms": -1},
        {"latency_ms": "5"},
        {"latency_ms": None},
        {"rpm": 0},
        {"unknown_knob": 1},
        {"seed": "x"},
        {"models": {"m": {"hang_s": True}}},
        {"models": ["m"]},
        {"organization": ""},
        {"organization": "org 1; DROP"},
        {"organization": 7},
    ],
)
def test_a_bad_patch_is_refused_whole(patch: dict) -> None:
    knob_set = KnobSet()
    before = knob_set.as_json()

    with pytest.raises(KnobError):
        knob_set.apply({"latency_ms": 99, **patch})

    assert knob_set.as_json() == before


def test_fail_status_accepts_timeout_and_status_strings() -> None:
    knob_set = KnobSet()
    knob_set.apply({"fail_status": "timeout", "models": {"m": {"fail_status": "503"}}})

    assert knob_set.for_model("x").fail_status == "timeout"
    assert knob_set.for_model("m").fail_status == 503


def test_restore_returns_to_the_start_up_knobs_and_seed() -> None:
    knob_set = KnobSet(Knobs(rpm=600), seed=7)
    knob_set.apply({"rpm": None, "seed": 8, "models": {"m": {"tpm": 1}}})

    knob_set.restore()

    assert knob_set.as_json() == {**KnobSet(Knobs(rpm=600), seed=7).as_json()}
    assert knob_set.for_model("m").tpm is None
    assert knob_set.seed == 7


def test_the_organization_a_429_names_is_a_knob_like_any_other() -> None:
    knob_set = KnobSet(Knobs(organization="org-start"))
    knob_set.apply({"models": {"m": {"organization": "org-m_2"}}})

    assert (knob_set.for_model("x").organization, knob_set.for_model("m").organization) == (
        "org-start",
        "org-m_2",
    )
    assert KnobSet().for_model("x").organization == "org-sim"
