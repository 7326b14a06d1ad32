"""Signature checks with twilio's RequestValidator, on URLs rebuilt from the public base URL."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from multidict import MultiDict

from phonebridge.errors import ConfigError
from phonebridge.twilio.signatures import SignatureChecker

# Twilio's documented example: token 12345, this URL and form give exactly this signature.
DOC_TOKEN = "12345"
DOC_FORM = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
DOC_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="

TOKEN = "secret-token"
FORM = {"CallSid": "CA01", "From": "+15550100", "To": "+15550199"}


def hmac_sha1(token: str, data: str) -> str:
    """An independent computation, so the tests do not only check the validator against itself."""
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def test_twilio_documented_example() -> None:
    checker = SignatureChecker(DOC_TOKEN, "https://mycompany.com")
    assert checker.webhook_url("/myapp.php", "foo=1&bar=2") == "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert checker.check_webhook("/myapp.php", "foo=1&bar=2", DOC_FORM, DOC_SIGNATURE)
    assert checker.sign("https://mycompany.com/myapp.php?foo=1&bar=2", DOC_FORM) == DOC_SIGNATURE


def test_webhook_signature_matches_an_independent_hmac() -> None:
    checker = SignatureChecker(TOKEN, "https://agent.example.com")
    data = "https://agent.example.com/twilio/voiceCallSidCA01From+15550100To+15550199"
    signature = hmac_sha1(TOKEN, data)
    assert checker.sign("https://agent.example.com/twilio/voice", FORM) == signature
    assert checker.check_webhook("/twilio/voice", "", FORM, signature)


@pytest.mark.parametrize(
    ("path", "query", "form", "token"),
    [
        ("/twilio/status", "", FORM, TOKEN),  # another URL
        ("/twilio/voice", "x=1", FORM, TOKEN),  # a query string Twilio did not call
        ("/twilio/voice", "", {**FORM, "To": "+15550198"}, TOKEN),  # a tampered parameter
        ("/twilio/voice", "", {**FORM, "Extra": "1"}, TOKEN),  # an added parameter
        ("/twilio/voice", "", {"CallSid": "CA01"}, TOKEN),  # a dropped parameter
        ("/twilio/voice", "", FORM, "other-token"),  # signed with another account's token
    ],
)
def test_tampered_webhooks_fail(path: str, query: str, form: dict[str, str], token: str) -> None:
    signature = SignatureChecker(TOKEN, "https://agent.example.com").sign(
        "https://agent.example.com/twilio/voice", FORM
    )
    assert not SignatureChecker(token, "https://agent.example.com").check_webhook(path, query, form, signature)


def test_tampered_host_fails() -> None:
    signature = hmac_sha1(TOKEN, "https://evil.example.com/twilio/voiceCallSidCA01From+15550100To+15550199")
    assert not SignatureChecker(TOKEN, "https://agent.example.com").check_webhook("/twilio/voice", "", FORM, signature)


@pytest.mark.parametrize("signature", [None, "", "not-a-signature", "0/KCTR6DLpKmkAf8muzZqo1nDgQ"])
def test_missing_or_malformed_signature_fails(signature: str | None) -> None:
    checker = SignatureChecker(DOC_TOKEN, "https://mycompany.com")
    assert not checker.check_webhook("/myapp.php", "foo=1&bar=2", DOC_FORM, signature)
    assert not checker.check_upgrade("/twilio/media", signature)


def test_query_string_is_part_of_the_signed_url() -> None:
    checker = SignatureChecker(TOKEN, "https://agent.example.com")
    url = "https://agent.example.com/twilio/status?leg=a%20b&n=1"
    signature = hmac_sha1(TOKEN, url + "CallSidCA01")
    assert checker.check_webhook("/twilio/status", "leg=a%20b&n=1", {"CallSid": "CA01"}, signature)
    assert not checker.check_webhook("/twilio/status", "leg=a b&n=1", {"CallSid": "CA01"}, signature)
    assert not checker.check_webhook("/twilio/status", "", {"CallSid": "CA01"}, signature)


def test_multidict_form_with_repeated_keys() -> None:
    checker = SignatureChecker(TOKEN, "https://agent.example.com")
    form = MultiDict([("CallSid", "CA01"), ("Tag", "b"), ("Tag", "a")])
    signature = hmac_sha1(TOKEN, "https://agent.example.com/twilio/voiceCallSidCA01TagaTagb")
    assert checker.check_webhook("/twilio/voice", "", form, signature)


def test_upgrade_validates_the_portless_wss_url_with_no_params() -> None:
    checker = SignatureChecker(TOKEN, "https://agent.example.com")
    assert checker.stream_url() == "wss://agent.example.com/twilio/media"
    signature = hmac_sha1(TOKEN, "wss://agent.example.com/twilio/media")
    assert checker.check_upgrade("/twilio/media", signature)
    assert not checker.check_upgrade("/twilio/voice", signature)
    # Signed over the https URL, or with a port, it is not the URL Twilio signs for the upgrade.
    assert not checker.check_upgrade("/twilio/media", hmac_sha1(TOKEN, "https://agent.example.com/twilio/media"))
    assert not checker.check_upgrade("/twilio/media", hmac_sha1(TOKEN, "wss://agent.example.com:443/twilio/media"))


def test_public_url_with_a_path_prefix_and_trailing_slash() -> None:
    checker = SignatureChecker(TOKEN, "https://example.com/pb/")
    assert checker.webhook_url("/twilio/voice") == "https://example.com/pb/twilio/voice"
    assert checker.webhook_url("/twilio/voice", "a=1") == "https://example.com/pb/twilio/voice?a=1"
    assert checker.stream_url() == "wss://example.com/pb/twilio/media"
    assert checker.stream_url("/other") == "wss://example.com/pb/other"
    webhook_sig = hmac_sha1(TOKEN, "https://example.com/pb/twilio/voiceCallSidCA01")
    assert checker.check_webhook("/twilio/voice", "", {"CallSid": "CA01"}, webhook_sig)
    assert checker.check_upgrade("/twilio/media", hmac_sha1(TOKEN, "wss://example.com/pb/twilio/media"))
    # Without the prefix it is some other URL.
    assert not checker.check_upgrade("/twilio/media", hmac_sha1(TOKEN, "wss://example.com/twilio/media"))


def test_public_url_with_an_explicit_port() -> None:
    checker = SignatureChecker(TOKEN, "https://agent.example.com:8443")
    assert checker.stream_url() == "wss://agent.example.com:8443/twilio/media"
    assert checker.check_upgrade("/twilio/media", hmac_sha1(TOKEN, "wss://agent.example.com:8443/twilio/media"))
    assert checker.webhook_url("/twilio/voice") == "https://agent.example.com:8443/twilio/voice"


def test_plain_http_maps_to_ws_for_local_development() -> None:
    checker = SignatureChecker(TOKEN, "http://127.0.0.1:8080")
    assert checker.stream_url() == "ws://127.0.0.1:8080/twilio/media"
    assert checker.webhook_url("/twilio/voice") == "http://127.0.0.1:8080/twilio/voice"


@pytest.mark.parametrize(
    ("token", "url", "message"),
    [
        ("", "https://a.example.com", "TWILIO_AUTH_TOKEN is empty: signatures cannot be checked"),
        (
            "t",
            "agent.example.com",
            "PHONEBRIDGE_PUBLIC_URL must be an https:// URL with a host, got 'agent.example.com'",
        ),
        (
            "t",
            "wss://a.example.com",
            "PHONEBRIDGE_PUBLIC_URL must be an https:// URL with a host, got 'wss://a.example.com'",
        ),
        ("t", "https://", "PHONEBRIDGE_PUBLIC_URL must be an https:// URL with a host, got 'https://'"),
        (
            "t",
            "https://a.example.com/?x=1",
            "PHONEBRIDGE_PUBLIC_URL must have no query, fragment or credentials, got 'https://a.example.com/?x=1'",
        ),
        (
            "t",
            "https://u:p@a.example.com",
            "PHONEBRIDGE_PUBLIC_URL must have no query, fragment or credentials, got 'https://u:p@a.example.com'",
        ),
    ],
)
def test_bad_configuration_is_refused(token: str, url: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        SignatureChecker(token, url)
    assert str(info.value) == message


def test_paths_must_be_absolute() -> None:
    checker = SignatureChecker(TOKEN, "https://agent.example.com")
    with pytest.raises(ValueError, match="path must start with '/', got 'twilio/voice'"):
        checker.webhook_url("twilio/voice")


# -- Webhook Rules: X-Twilio-Webhooks-Signature-Settings (validated by twilio's RequestValidator) ---------

SHARED_ID, SHARED_SECRET = "webhooks_sharedkey_01", "shared-secret"


def hmac_sha256(secret: str, data: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), data.encode(), hashlib.sha256).digest()).decode()


def test_a_webhook_signed_with_a_configured_shared_key_and_sha256_passes() -> None:
    checker = SignatureChecker(TOKEN, "https://agent.example.com", {SHARED_ID: SHARED_SECRET})
    data = "https://agent.example.com/twilio/voiceCallSidCA01From+15550100To+15550199"
    settings = f"key={SHARED_ID},algorithm=HMAC_SHA256"
    assert checker.check_webhook("/twilio/voice", "", FORM, hmac_sha256(SHARED_SECRET, data), settings)
    assert checker.check_upgrade("/twilio/media", hmac_sha256(SHARED_SECRET, "wss://agent.example.com/twilio/media"),
                                 settings)
    # The same signature without the header (legacy HMAC-SHA1 with the auth token) does not pass.
    assert not checker.check_webhook("/twilio/voice", "", FORM, hmac_sha256(SHARED_SECRET, data))
    # Nor one made with the auth token while the header names the shared key.
    assert not checker.check_webhook("/twilio/voice", "", FORM, hmac_sha256(TOKEN, data), settings)


def test_a_shared_key_we_were_not_given_or_an_unknown_algorithm_is_refused() -> None:
    checker = SignatureChecker(TOKEN, "https://agent.example.com", {SHARED_ID: SHARED_SECRET})
    data = "https://agent.example.com/twilio/voiceCallSidCA01From+15550100To+15550199"
    assert not checker.check_webhook("/twilio/voice", "", FORM, hmac_sha256(SHARED_SECRET, data),
                                     "key=webhooks_sharedkey_other,algorithm=HMAC_SHA256")
    assert not checker.check_webhook("/twilio/voice", "", FORM, hmac_sha256(SHARED_SECRET, data),
                                     f"key={SHARED_ID},algorithm=HMAC_SHA512")


def test_settings_without_a_key_mean_the_auth_token_under_the_named_algorithm() -> None:
    checker = SignatureChecker(TOKEN, "https://agent.example.com")
    data = "https://agent.example.com/twilio/voiceCallSidCA01From+15550100To+15550199"
    assert checker.check_webhook("/twilio/voice", "", FORM, hmac_sha256(TOKEN, data), "algorithm=HMAC_SHA256")
    assert checker.check_webhook("/twilio/voice", "", FORM, hmac_sha1(TOKEN, data), "")


def test_shared_keys_setting_is_parsed_or_refused() -> None:
    from phonebridge.twilio.signatures import parse_shared_keys

    assert parse_shared_keys(None) == {}
    assert parse_shared_keys(" a=x , b=y=z ") == {"a": "x", "b": "y=z"}
    for bad in ("a", "=x", "a="):
        with pytest.raises(ConfigError, match="PHONEBRIDGE_WEBHOOK_SHARED_KEYS"):
            parse_shared_keys(bad)
