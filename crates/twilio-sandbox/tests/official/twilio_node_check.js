// Drives the twilio-sandbox with Twilio's official Node helper library (twilio 6.x), used
// unchanged: only the Verify domain's baseUrl is pointed at the sandbox.
//
// Usage: node twilio_node_check.js <base-url>   (NODE_PATH must reach the `twilio` package)
// Exits non-zero with a message on the first failed expectation.
"use strict";

const twilio = require("twilio");

const ACCOUNT_SID = "AC00000000000000000000000000000000";
const AUTH_TOKEN = "sandbox-auth-token";
const SERVICE_SID = "VA00000000000000000000000000000000";

// What each magic destination must reject with: [HTTP status, Twilio code].
const EXPECTED_FAILURES = {
  invalid_60200: [400, 60200],
  landline_60205: [403, 60205],
  fraud_guard_60410: [403, 60410],
  geo_blocked_60605: [403, 60605],
  rate_limited_20429: [429, 20429],
  server_error_500: [500, 20500],
};
// Magic destinations that must succeed (the delivery scenarios fail later, in Verify Events).
const EXPECTED_SUCCESSES = new Set(["slow", "delivered", "undelivered_30003", "landline_30006", "silent"]);

class Failure extends Error {}

function expect(condition, message) {
  if (!condition) throw new Failure(message);
}

async function expectRejects(action, status, code, what) {
  try {
    await action();
  } catch (error) {
    if (error instanceof Failure) throw error;
    expect(
      error.status === status && error.code === code,
      `${what}: expected HTTP ${status} / code ${code}, got HTTP ${error.status} / code ${error.code} (${error.message})`,
    );
    return error;
  }
  throw new Failure(`${what}: expected RestException ${code}, nothing was thrown`);
}

async function getJson(base, path) {
  const response = await fetch(base.replace(/\/+$/, "") + path);
  return response.json();
}

async function latestCode(base, to) {
  const messages = await getJson(base, "/sandbox/messages?to=" + encodeURIComponent(to));
  expect(messages.length > 0, `no inbox message for ${to}`);
  return messages[0].code;
}

function wrong(code) {
  return [...code].map((c) => (c === "0" ? "1" : "0")).join("");
}

async function main(base) {
  const client = twilio(ACCOUNT_SID, AUTH_TOKEN);
  // Configuration only: the library builds every Verify URL from this domain's baseUrl.
  client.verify.baseUrl = base;
  const service = client.verify.v2.services(SERVICE_SID);

  const fetchedService = await service.fetch();
  expect(fetchedService.sid === SERVICE_SID, `service sid ${fetchedService.sid}`);

  // Create, check wrong then right, and the approved verification is gone.
  let to = "+14155552681";
  let verification = await service.verifications.create({ to, channel: "sms" });
  expect(/^VE[0-9a-f]{32}$/.test(verification.sid), `sid ${verification.sid}`);
  expect(verification.status === "pending" && verification.valid === false, `status ${verification.status}`);
  expect(verification.dateCreated instanceof Date && !isNaN(verification.dateCreated), "dateCreated did not parse");
  let code = await latestCode(base, to);
  const fetched = await service.verifications(verification.sid).fetch();
  expect(fetched.status === "pending", `fetch ${fetched.status}`);
  const wrongCheck = await service.verificationChecks.create({ to, code: wrong(code) });
  expect(wrongCheck.status === "pending" && wrongCheck.valid === false, `wrong check ${wrongCheck.status}`);
  const rightCheck = await service.verificationChecks.create({ verificationSid: verification.sid, code });
  expect(rightCheck.status === "approved" && rightCheck.valid === true, `right check ${rightCheck.status}`);
  await expectRejects(() => service.verifications(verification.sid).fetch(), 404, 20404, "fetch after approval");

  // Cancel: still fetchable as canceled, no longer checkable.
  to = "+14155552682";
  verification = await service.verifications.create({ to, channel: "call" });
  const canceled = await service.verifications(verification.sid).update({ status: "canceled" });
  expect(canceled.status === "canceled", `cancel ${canceled.status}`);
  expect((await service.verifications(verification.sid).fetch()).status === "canceled", "fetch canceled");
  await expectRejects(
    () => service.verificationChecks.create({ verificationSid: verification.sid, code: "123456" }),
    404,
    20404,
    "check after cancel",
  );

  // Five wrong checks answer pending; the sixth rejects with 60202.
  to = "+14155552683";
  await service.verifications.create({ to, channel: "sms" });
  code = await latestCode(base, to);
  for (let attempt = 1; attempt <= 5; attempt++) {
    const answer = await service.verificationChecks.create({ to, code: wrong(code) });
    expect(answer.status === "pending", `wrong check ${attempt}: ${answer.status}`);
  }
  await expectRejects(() => service.verificationChecks.create({ to, code: wrong(code) }), 429, 60202, "sixth check");

  // Five sends of one verification; the sixth rejects with 60203.
  to = "+14155552684";
  const first = await service.verifications.create({ to, channel: "sms" });
  for (let attempt = 2; attempt <= 5; attempt++) {
    const again = await service.verifications.create({ to, channel: "sms" });
    expect(again.sid === first.sid, `resend ${attempt} got a new sid`);
  }
  await expectRejects(() => service.verifications.create({ to, channel: "sms" }), 429, 60203, "sixth send");
  // Canceled, so the script can run again against the same sandbox.
  await service.verifications(first.sid).update({ status: "canceled" });

  // Every magic destination.
  const scenarios = await getJson(base, "/sandbox/scenarios");
  for (const name of Object.keys(EXPECTED_FAILURES)) {
    expect(name in scenarios, `scenario ${name} not listed`);
  }
  for (const [name, destination] of Object.entries(scenarios)) {
    if (name in EXPECTED_FAILURES) {
      const [status, code] = EXPECTED_FAILURES[name];
      await expectRejects(() => service.verifications.create({ to: destination, channel: "sms" }), status, code, name);
    } else if (EXPECTED_SUCCESSES.has(name)) {
      const answer = await service.verifications.create({ to: destination, channel: "sms" });
      expect(answer.status === "pending", `${name}: ${answer.status}`);
      await service.verifications(answer.sid).update({ status: "canceled" });
    } else {
      throw new Failure(`scenario ${name} has no expectation in this script`);
    }
  }

  // Wrong credentials.
  const stranger = twilio(ACCOUNT_SID, "wrong-token");
  stranger.verify.baseUrl = base;
  await expectRejects(
    () => stranger.verify.v2.services(SERVICE_SID).verifications.create({ to: "+14155552686", channel: "sms" }),
    401,
    20003,
    "wrong token",
  );
  console.log("twilio-node checks passed");
}

if (process.argv.length !== 3) {
  console.error("usage: node twilio_node_check.js <base-url>");
  process.exit(2);
}
main(process.argv[2]).catch((error) => {
  const detail =
    error instanceof Failure
      ? error.message
      : `unexpected ${error.name} HTTP ${error.status} / code ${error.code}: ${error.message}`;
  console.error(`FAILED: ${detail}`);
  process.exit(1);
});
