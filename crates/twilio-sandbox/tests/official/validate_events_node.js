// Validates Verify Event posts captured from the twilio-sandbox with Twilio's official
// Node helper library (twilio 6.x): validateRequestWithBody(token, signature, url, body),
// which checks X-Twilio-Signature against the URL and bodySHA256 against the body.
//
// Usage: NODE_PATH=.tools/node_modules node validate_events_node.js <auth-token> <json>
// where <json> is [{"url", "body", "signature"}, ...]. Exits non-zero on the first failure.

const twilio = require("twilio");

const [token, json] = process.argv.slice(2);
const captured = JSON.parse(json);
for (const { url, body, signature } of captured) {
  if (!twilio.validateRequestWithBody(token, signature, url, body)) {
    console.error(`does not validate: ${url}`);
    process.exit(1);
  }
  // A validator that accepts anything proves nothing: a changed body must fail.
  if (twilio.validateRequestWithBody(token, signature, url, body + " ")) {
    console.error(`a tampered body validates: ${url}`);
    process.exit(1);
  }
}
console.log(`ok: ${captured.length} event posts validate with twilio-node`);
