"""Which two answers a preference may compare: ids minted by gateway.ids, pairs checked purely."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.errors import UnprocessableEntity
from gateway.ids import Claims, ResponseIdSigner
from gateway.routes.feedback import FeedbackIn, check_pair

SIGNER = ResponseIdSigner([b"k" * 40])
NOW = 1_700_000_000


def _claims(nonce: str, variant: str = "a", pair: str | None = None, **changes: object) -> Claims:
    fields: dict[str, object] = {
        "flag": "bot", "variant": variant, "flag_version": 3, "app": "shop", "unit": "u" * 32,
        "time": NOW, "nonce": nonce, "pair": pair,
    }  # fmt: skip
    fields.update(changes)
    return Claims(**fields)  # type: ignore[arg-type]


def _roundtrip(claims: Claims) -> Claims:
    """Signed and verified again: what the route sees."""
    return SIGNER.verify(SIGNER.sign(claims), now=NOW, max_age=60)


def test_a_shadow_answer_pairs_with_its_own_primary_in_either_order() -> None:
    primary = _roundtrip(_claims("primary-nonce-1"))
    shadow = _roundtrip(_claims("shadow-nonce-1", "b", pair="primary-nonce-1"))
    assert shadow.pair == primary.nonce
    check_pair(primary, shadow)
    check_pair(shadow, primary)


def test_a_shadow_answer_with_another_primary_is_a_forged_pair() -> None:
    shadow = _roundtrip(_claims("shadow-nonce-1", "b", pair="primary-nonce-1"))
    stranger = _roundtrip(_claims("primary-nonce-2"))
    for a, b in ((shadow, stranger), (stranger, shadow)):
        with pytest.raises(UnprocessableEntity, match="its own primary"):
            check_pair(a, b)
    twin = _roundtrip(_claims("shadow-nonce-2", "b", pair="primary-nonce-1"))
    with pytest.raises(UnprocessableEntity, match="its own primary"):
        check_pair(shadow, twin)  # two shadows of one primary are not a pair either


def test_two_primaries_of_one_flag_and_app_may_be_compared() -> None:
    check_pair(_roundtrip(_claims("n-1")), _roundtrip(_claims("n-2", "b")))


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (_claims("n-2", flag="other-bot"), "different flags"),
        (_claims("n-2", flag=None), "different flags"),
        (_claims("n-2", app="another-app"), "different apps"),
        (_claims("n-1"), "two different answers"),
    ],
)
def test_answers_that_cannot_be_compared_are_refused(other: Claims, message: str) -> None:
    with pytest.raises(UnprocessableEntity, match=message) as caught:
        check_pair(_roundtrip(_claims("n-1")), _roundtrip(other))
    assert caught.value.status == 422
    assert caught.value.param == "other_response_id"


def test_a_preference_names_its_pair_and_winner_and_no_other_kind_does() -> None:
    ok = FeedbackIn(response_id="lg1.a.b", kind="preference", other_response_id="lg1.c.d",
                    winner="tie")  # fmt: skip
    assert ok.winner == "tie"
    bad: list[dict[str, object]] = [
        {"kind": "preference", "winner": "a"},
        {"kind": "preference", "other_response_id": "lg1.c.d"},
        {"kind": "preference", "other_response_id": "lg1.a.b", "winner": "a"},
        {"kind": "preference", "other_response_id": "lg1.c.d", "winner": "left"},
        {"kind": "thumbs_up", "other_response_id": "lg1.c.d"},
        {"kind": "thumbs_up", "winner": "a"},
    ]
    for body in bad:
        with pytest.raises(ValidationError):
            FeedbackIn.model_validate({"response_id": "lg1.a.b", **body})
