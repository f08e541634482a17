"""Validates Verify Event posts captured from the twilio-sandbox with Twilio's official
Python helper library (twilio 9.x): RequestValidator.validate(url, raw_body, signature),
which checks bodySHA256 against the body and X-Twilio-Signature against the URL.

Usage: validate_events_python.py <auth-token> <json: [{"url", "body", "signature"}, ...]>
Exits non-zero with a message on the first request that does not validate.
"""

import json
import sys

from twilio.request_validator import RequestValidator


def main():
    token, captured = sys.argv[1], json.loads(sys.argv[2])
    validator = RequestValidator(token)
    for request in captured:
        url, body, signature = request["url"], request["body"], request["signature"]
        if not validator.validate(url, body, signature):
            sys.exit(f"does not validate: {url}")
        # A validator that accepts anything proves nothing: a changed body must fail.
        if validator.validate(url, body + " ", signature):
            sys.exit(f"a tampered body validates: {url}")
    print(f"ok: {len(captured)} event posts validate with twilio-python")


if __name__ == "__main__":
    main()
