"""Drives the twilio-sandbox with Twilio's official Python helper library (twilio 9.x),
used unchanged: only the Verify domain's base_url is pointed at the sandbox.

Usage: twilio_python_check.py <base-url>   (e.g. http://127.0.0.1:8090, where `cargo run` serves the sandbox)
Exits non-zero with a message on the first failed expectation.
"""

import json
import sys
import urllib.parse
import urllib.request

from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

ACCOUNT_SID = "AC00000000000000000000000000000000"
AUTH_TOKEN = "sandbox-auth-token"
SERVICE_SID = "VA00000000000000000000000000000000"

# What each magic destination must raise: (HTTP status, Twilio code).
EXPECTED_FAILURES = {
    "invalid_60200": (400, 60200),
    "landline_60205": (403, 60205),
    "fraud_guard_60410": (403, 60410),
    "geo_blocked_60605": (403, 60605),
    "rate_limited_20429": (429, 20429),
    "server_error_500": (500, 20500),
}
# Magic destinations that must succeed (the delivery scenarios fail later, in Verify Events).
EXPECTED_SUCCESSES = {"slow", "delivered", "undelivered_30003", "landline_30006", "silent"}


class Failure(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise Failure(message)


def expect_raises(action, status, code, what):
    try:
        action()
    except TwilioRestException as error:
        expect(
            error.status == status and error.code == code,
            f"{what}: expected HTTP {status} / code {code}, got HTTP {error.status} / code {error.code} ({error.msg})",
        )
        return error
    raise Failure(f"{what}: expected TwilioRestException {code}, nothing was raised")


def get_json(base, path):
    with urllib.request.urlopen(base.rstrip("/") + path, timeout=30) as response:
        return json.loads(response.read().decode("utf-8"))


def latest_code(base, to):
    messages = get_json(base, "/sandbox/messages?to=" + urllib.parse.quote(to, safe=""))
    expect(messages, f"no inbox message for {to}")
    return messages[0]["code"]


def wrong(code):
    return "".join("1" if c == "0" else "0" for c in code)


def main(base):
    client = Client(ACCOUNT_SID, AUTH_TOKEN)
    # Configuration only: the library builds every Verify URL from this domain's base_url.
    client.verify.base_url = base
    service = client.verify.v2.services(SERVICE_SID)

    fetched_service = service.fetch()
    expect(fetched_service.sid == SERVICE_SID, f"service sid {fetched_service.sid}")
    expect(fetched_service.code_length == 6, f"code_length {fetched_service.code_length}")

    # Create, check wrong then right, and the approved verification is gone.
    to = "+14155552671"
    verification = service.verifications.create(to=to, channel="sms")
    expect(verification.sid.startswith("VE") and len(verification.sid) == 34, f"sid {verification.sid}")
    expect(verification.status == "pending", f"status {verification.status}")
    expect(verification.valid is False, f"valid {verification.valid}")
    expect(verification.channel == "sms", f"channel {verification.channel}")
    expect(verification.date_created is not None, "date_created did not parse")
    expect(verification.send_code_attempts[0]["channel"] == "SMS", f"attempts {verification.send_code_attempts}")
    code = latest_code(base, to)
    expect(len(code) == 6 and code.isdigit(), f"code {code!r}")

    fetched = service.verifications(verification.sid).fetch()
    expect(fetched.sid == verification.sid and fetched.status == "pending", f"fetch {fetched.status}")

    wrong_check = service.verification_checks.create(to=to, code=wrong(code))
    expect(wrong_check.status == "pending" and wrong_check.valid is False, f"wrong check {wrong_check.status}")
    right_check = service.verification_checks.create(verification_sid=verification.sid, code=code)
    expect(right_check.status == "approved" and right_check.valid is True, f"right check {right_check.status}")
    expect_raises(lambda: service.verifications(verification.sid).fetch(), 404, 20404, "fetch after approval")

    # Cancel: still fetchable as canceled, no longer checkable.
    to = "+14155552672"
    verification = service.verifications.create(to=to, channel="call", locale="fr")
    canceled = service.verifications(verification.sid).update(status="canceled")
    expect(canceled.status == "canceled", f"cancel {canceled.status}")
    expect(service.verifications(verification.sid).fetch().status == "canceled", "fetch canceled")
    expect_raises(
        lambda: service.verification_checks.create(verification_sid=verification.sid, code="123456"),
        404,
        20404,
        "check after cancel",
    )

    # Five wrong checks answer pending; the sixth raises 60202.
    to = "+14155552673"
    verification = service.verifications.create(to=to, channel="sms")
    code = latest_code(base, to)
    for attempt in range(1, 6):
        answer = service.verification_checks.create(to=to, code=wrong(code))
        expect(answer.status == "pending", f"wrong check {attempt}: {answer.status}")
    expect_raises(
        lambda: service.verification_checks.create(to=to, code=wrong(code)), 429, 60202, "sixth check"
    )

    # Five sends of one verification; the sixth raises 60203.
    to = "+14155552674"
    first = service.verifications.create(to=to, channel="sms")
    for attempt in range(2, 6):
        again = service.verifications.create(to=to, channel="whatsapp" if attempt % 2 else "sms")
        expect(again.sid == first.sid, f"resend {attempt} got a new sid")
        expect(len(again.send_code_attempts) == attempt, f"resend {attempt}: {again.send_code_attempts}")
    expect_raises(lambda: service.verifications.create(to=to, channel="sms"), 429, 60203, "sixth send")
    # Canceled, so the script can run again against the same sandbox.
    service.verifications(first.sid).update(status="canceled")

    # Email works the same way.
    email = "someone@example.com"
    verification = service.verifications.create(to=email, channel="email")
    expect(verification.send_code_attempts[0]["channel"] == "EMAIL", "email attempt label")
    approved = service.verification_checks.create(to=email, code=latest_code(base, email))
    expect(approved.status == "approved", f"email check {approved.status}")

    # Bad parameters.
    expect_raises(lambda: service.verifications.create(to="4155552671", channel="sms"), 400, 60200, "bad To")
    expect_raises(lambda: service.verifications.create(to="+14155552675", channel="fax"), 400, 60200, "bad Channel")

    # Every magic destination.
    scenarios = get_json(base, "/sandbox/scenarios")
    for name in EXPECTED_FAILURES:
        expect(name in scenarios, f"scenario {name} not listed")
    for name, destination in scenarios.items():
        if name in EXPECTED_FAILURES:
            status, code = EXPECTED_FAILURES[name]
            expect_raises(
                lambda: service.verifications.create(to=destination, channel="sms"), status, code, name
            )
        elif name in EXPECTED_SUCCESSES:
            answer = service.verifications.create(to=destination, channel="sms")
            expect(answer.status == "pending", f"{name}: {answer.status}")
            service.verifications(answer.sid).update(status="canceled")
        else:
            raise Failure(f"scenario {name} has no expectation in this script")

    # Wrong credentials.
    stranger = Client(ACCOUNT_SID, "wrong-token")
    stranger.verify.base_url = base
    expect_raises(
        lambda: stranger.verify.v2.services(SERVICE_SID).verifications.create(to="+14155552676", channel="sms"),
        401,
        20003,
        "wrong token",
    )

    # Unknown service.
    expect_raises(
        lambda: client.verify.v2.services("VA" + "f" * 32).verifications.create(to="+14155552677", channel="sms"),
        404,
        20404,
        "unknown service",
    )
    print("twilio-python checks passed")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: twilio_python_check.py <base-url>", file=sys.stderr)
        sys.exit(2)
    try:
        main(sys.argv[1])
    except Failure as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
    except TwilioRestException as error:
        print(f"FAILED: unexpected TwilioRestException HTTP {error.status} / code {error.code}: {error.msg}", file=sys.stderr)
        sys.exit(1)
    except Exception as error:  # noqa: BLE001 - any other failure is reported the same way
        print(f"FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
