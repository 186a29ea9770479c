"""Keys and admin tokens: hashing, the anonymous policy, roles."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gateway.auth import Authenticator, admin_principal, hash_secret
from gateway.config import AdminTokenConfig, ApiKeyConfig, AuthConfig
from gateway.errors import Forbidden, Unauthorized
from router.config import FlagsConfig

KEY = "lgk-test-key-1"


def _auth(**config: object) -> Authenticator:
    return Authenticator(AuthConfig.model_validate(config))


def test_hashes_are_sha256_or_hmac_under_the_pepper() -> None:
    assert hash_secret("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_secret("abc", b"pepper") != hash_secret("abc")
    assert len(hash_secret(b"abc", b"pepper")) == 64


def test_config_refuses_a_key_in_place_of_its_hash() -> None:
    with pytest.raises(ValueError, match="64 hex digits"):
        ApiKeyConfig(hash=KEY, app_id="a")
    entry = ApiKeyConfig(hash="sha256:" + hash_secret(KEY).upper(), app_id="a")
    assert entry.hash == hash_secret(KEY)


def test_a_key_maps_to_its_app_and_limits() -> None:
    auth = _auth(keys=[{"hash": hash_secret(KEY), "app_id": "shop", "limits": {"rpm": 5}}])
    app = auth.app(b"Bearer " + KEY.encode())
    assert (app.app_id, app.rpm, app.limited) == ("shop", 5, True)
    for header in (None, b"", b"Bearer wrong", b"Basic " + KEY.encode(), b"Bearer "):
        with pytest.raises(Unauthorized) as caught:
            auth.app(header)
        assert KEY not in caught.value.message


def test_anonymous_policy() -> None:
    # No keys: open, whatever bearer token the SDK sends.
    assert _auth().app(b"Bearer unused").app_id == "default"
    # Explicitly closed with no keys: nobody gets in.
    with pytest.raises(Unauthorized):
        _auth(allow_anonymous=False).app(None)
    # Keys plus explicit anonymous: no header is anonymous, a wrong key is still refused.
    auth = _auth(allow_anonymous=True, keys=[{"hash": hash_secret(KEY), "app_id": "shop"}])
    assert auth.app(None).app_id == "default"
    with pytest.raises(Unauthorized):
        auth.app(b"Bearer nope")


def test_keys_from_redis_are_merged_config_first() -> None:
    auth = _auth(keys=[{"hash": hash_secret(KEY), "app_id": "shop"}])
    auth.replace_dynamic(
        [
            ApiKeyConfig(hash=hash_secret(KEY), app_id="impostor"),
            ApiKeyConfig(hash=hash_secret("other"), app_id="other-app"),
        ]
    )
    assert auth.app(b"Bearer " + KEY.encode()).app_id == "shop"
    assert auth.app(b"Bearer other").app_id == "other-app"


def test_model_allow_list() -> None:
    auth = _auth(keys=[{"hash": hash_secret(KEY), "app_id": "a", "allowed_models": ["m1"]}])
    app = auth.app(b"Bearer " + KEY.encode())
    assert app.may_use("m1")
    assert not app.may_use("m2")


def _settings(tokens: list[AdminTokenConfig], legacy: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        auth=AuthConfig(admin_tokens=tokens), flags=FlagsConfig(admin_token=legacy)
    )


def test_admin_roles_rank() -> None:
    tokens = [
        AdminTokenConfig(hash=hash_secret("v"), role="viewer", name="vera"),
        AdminTokenConfig(hash=hash_secret("e"), role="flag_editor", name="ed"),
        AdminTokenConfig(hash=hash_secret("a"), role="admin", name="ada"),
    ]
    settings = _settings(tokens, legacy="legacy")
    viewer = admin_principal(settings, "Bearer v")
    assert (viewer.name, viewer.allows("viewer"), viewer.allows("flag_editor")) == (
        "vera",
        True,
        False,
    )
    editor = admin_principal(settings, "Bearer e")
    assert editor.allows("flag_editor")
    assert not editor.allows("admin")
    assert admin_principal(settings, "Bearer a").allows("admin")
    shared = admin_principal(settings, "Bearer legacy")
    assert shared.shared
    assert shared.allows("admin")
    with pytest.raises(Unauthorized):
        admin_principal(settings, "Bearer x")
    with pytest.raises(Forbidden):
        admin_principal(_settings([]), "Bearer v")
