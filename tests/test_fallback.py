"""The fallback chain: which build is tried next, which ships, and what a chain waits for."""

import pytest

from workflow_scripts import fallback

REMEDIES = {"Q8_0": (), "Q4_K_M": ("Q4_K_M-a", "Q4_K_M-ab"), "IQ4_XS": ("IQ4_XS-a",)}


def test_a_failed_build_is_followed_by_its_next_remedy_until_one_passes():
    verdicts = {"Q8_0": "passed", "Q4_K_M": "failed", "Q4_K_M-a": "passed", "IQ4_XS": "passed"}
    tried = fallback.tries(REMEDIES, verdicts.get).tried
    assert tried == {"Q8_0": ["Q8_0"], "Q4_K_M": ["Q4_K_M", "Q4_K_M-a"], "IQ4_XS": ["IQ4_XS"]}
    assert fallback.ships(tried, verdicts.get) == {"Q8_0": "Q8_0", "Q4_K_M": "Q4_K_M-a", "IQ4_XS": "IQ4_XS"}


def test_a_quant_whose_tries_all_failed_ships_nothing():
    verdicts = {"Q8_0": "failed", "Q4_K_M": "failed", "Q4_K_M-a": "failed", "Q4_K_M-ab": "failed",
                "IQ4_XS": "failed", "IQ4_XS-a": "failed"}
    tried = fallback.tries(REMEDIES, verdicts.get).tried
    assert tried["Q4_K_M"] == ["Q4_K_M", "Q4_K_M-a", "Q4_K_M-ab"] and tried["Q8_0"] == ["Q8_0"]
    assert fallback.ships(tried, verdicts.get) == {"Q8_0": None, "Q4_K_M": None, "IQ4_XS": None}


def test_a_chain_stops_at_a_verdict_not_made_yet_and_asks_for_it():
    """The rules learn a verdict through a checkpoint: the chain goes no further than the first
    build without one, that build is the one asked for, and nothing ships for it yet."""
    asked = []

    def verdict_of(build):
        asked.append(build)
        return {"Q4_K_M": "failed"}.get(build)

    tried = fallback.tries(REMEDIES, verdict_of).tried
    assert tried == {"Q8_0": ["Q8_0"], "Q4_K_M": ["Q4_K_M", "Q4_K_M-a"], "IQ4_XS": ["IQ4_XS"]}
    assert asked == ["Q4_K_M", "Q4_K_M-a", "IQ4_XS"]  # a quant without remedies needs no verdict to plan
    assert fallback.ships(tried, verdict_of) == {}


def test_a_remedy_that_changes_no_tensor_type_is_skipped_and_the_next_one_tried():
    """Q4_K_M-a plans the same types as Q4_K_M: never built; Q4_K_M-ab follows the failed Q4_K_M."""
    verdicts = {"Q8_0": "passed", "Q4_K_M": "failed", "Q4_K_M-ab": "passed", "IQ4_XS": "failed"}
    changed = {"Q4_K_M-a": False, "Q4_K_M-ab": True, "IQ4_XS-a": False}
    chains = fallback.tries(REMEDIES, verdicts.get, changed.get)
    assert chains.tried == {"Q8_0": ["Q8_0"], "Q4_K_M": ["Q4_K_M", "Q4_K_M-ab"], "IQ4_XS": ["IQ4_XS"]}
    assert chains.skipped == {"Q8_0": [], "Q4_K_M": ["Q4_K_M-a"], "IQ4_XS": ["IQ4_XS-a"]}
    assert not chains.waiting
    # every remedy skipped: the failed build is the last try, and nothing ships for the quant
    assert fallback.ships(chains.tried, verdicts.get) == {"Q8_0": "Q8_0", "Q4_K_M": "Q4_K_M-ab", "IQ4_XS": None}


def test_a_chain_waits_for_a_remedy_plan_not_made_yet_and_ships_nothing_meanwhile():
    """The failed build's verdict is known but the remedy's plan is not: the quant is not decided
    (shipping None now would withhold it before its remedy had a chance)."""
    verdicts = {"Q8_0": "passed", "Q4_K_M": "failed", "IQ4_XS": "passed"}
    chains = fallback.tries(REMEDIES, verdicts.get, {"Q4_K_M-a": None}.get)
    assert chains.tried["Q4_K_M"] == ["Q4_K_M"] and chains.waiting == {"Q4_K_M"}
    assert fallback.ships(chains.tried, verdicts.get, chains.waiting) == {"Q8_0": "Q8_0", "IQ4_XS": "IQ4_XS"}


def test_a_remedy_follows_the_build_before_it_in_its_chain():
    assert fallback.previous(REMEDIES, "Q4_K_M-ab") == "Q4_K_M-a"
    assert fallback.previous(REMEDIES, "Q4_K_M-a") == "Q4_K_M"
    with pytest.raises(KeyError, match="'Q4_K_M' is no remedy"):
        fallback.previous(REMEDIES, "Q4_K_M")


def test_a_build_stands_for_the_quant_it_was_tried_for():
    assert fallback.requested_as(REMEDIES, "Q4_K_M-ab") == "Q4_K_M"
    assert fallback.requested_as(REMEDIES, "Q8_0") == "Q8_0"
    with pytest.raises(KeyError, match="'Q5_K_M' is neither"):
        fallback.requested_as(REMEDIES, "Q5_K_M")
