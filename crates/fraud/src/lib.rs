//! Pure, explainable risk scoring of verification starts against SMS pumping
//! (international revenue share fraud): sends to numbers the fraudster is paid for, made by
//! bots that never enter a code. It runs before a message is paid for, and says why.
//!
//! No IO, no clock, no randomness: the service reads the shared store and passes `now`.
//!
//! # How the service uses it
//!
//! For each start that passed the rate limits:
//! 1. build a [`Subject`] (channel, phone parts, destination hash, client IP and its
//!    [network](network_of), identity tag, whether the caller completed a step-up);
//! 2. read the counters of [`queries`] and the blocks active on [`block_targets`];
//! 3. [`assess`] them into an [`Outcome`]: record its `adds` and `blocks`, and refuse the
//!    send when its assessment [`refuses`](domain::abuse::RiskAssessment::refuses);
//! 4. on an approved check, record [`approved`] (with the network its start's assessment
//!    kept);
//! 5. when Twilio refuses a send with 60410, 60605 or 21408, impose [`provider_verdict`].
//!
//! # Rules (decide `block` outright)
//!
//! A country on the block list or off a non-empty allow list; a blocked number type (premium
//! rate and shared cost by default); an active block on the destination, client IP, range
//! or country (its reason names the block's own reason code and detail).
//!
//! # Signals (add weights to a score)
//!
//! * what the number is: a high-risk country, no country at all, a risky number type;
//! * `PREFIX_VELOCITY`: new destinations in one range (the number without its last five
//!   digits) in a short window;
//! * `PREFIX_LOW_CONVERSION` / `COUNTRY_LOW_CONVERSION`: approvals over new destinations in
//!   a window, once there are enough; pumping never enters codes. The country signal is
//!   weak on purpose: an attack on one range drags its country down, and that alone must
//!   refuse no one;
//! * `SEQUENTIAL_NUMBERS`: new destinations within one block of 100 numbers;
//! * `IP_FAN_OUT` / `IDENTITY_FAN_OUT`: new destinations from one client IP or for one user;
//! * `NETWORK_LOW_CONVERSION`: approvals over new destinations started from one client
//!   network (IPv4 /24, IPv6 /48), once there are enough: an attacker that takes a new
//!   address, identity and range for every start mostly keeps its network.
//!
//! Each signal has tiers (a count, or a sample and a rate, and the weight they add); the
//! heaviest tier reached counts.
//!
//! # Counters
//!
//! Keys are short and namespaced, never a raw number: `prefix:+4479111`, `country:GB`,
//! `dest:<hash>`, `seq:<hundred-block tag>`, `ipfan:<ip>`, `net:<network>`,
//! `netstep:<network>`, `idfan:<identity tag>`.
//!
//! Distinct destinations are counted without storing numbers: each start reads its own
//! destination's counter; when that is zero the destination is new, and only then does the
//! start add one to the range, country, hundred-block, IP and identity counters. Approved
//! checks add to the range, country and destination counters. So resends and retries after
//! a step-up count once, and conversion is "how many of the numbers tried approved". Starts
//! count whether or not they are sent (shadow and enforce see the same counters), except
//! that a start a rule refused (an active block, say) adds nothing to its range and
//! country: its user could not approve, and counting it would block the range again the
//! moment its block ends. A network counts only the new destinations scoring allowed, and
//! their approvals (the assessment keeps the network for the approval): a start refused
//! for its range gives its sender no code, and says nothing about the network. Likewise a
//! start refused only for its network's conversion is not counted for its range and
//! country: a network stepped up for good would otherwise drag every range it tries down
//! to a block, and the real users of those ranges with it.
//!
//! A network also counts the step-ups it is asked and those its users complete: in
//! enforce mode a start sent with `step_up_completed`; in shadow mode, which asks nothing
//! and sends the stepped-up start, that start's code entered (the assessment keeps the
//! network for it). So shadow mode sees a network that walks away from its step-ups as
//! enforce does.
//!
//! # Decision
//!
//! The score is the sum of the weights; reasons come strongest first and never hold a
//! destination or its hash (a range prefix or country at most). A rule blocks. Otherwise
//! behaviour (every signal but what the number is) at or above `block_score` blocks, and a
//! score at or above `step_up_score` asks for a step-up, which a caller that completed one
//! (captcha, TOTP) turns into an allow; a block stays a block. What a number is never
//! blocks: a block stops the codes whose approvals would clear a range, a step-up does not.
//! With the defaults no weak signal (high-risk country, VoIP, low country conversion, a
//! busy range) nor any two of them refuse.
//!
//! When behaviour reaches `block_score`, scoring also imposes blocks: on the range when a
//! range signal took part (reason: the strongest one's code), on the client IP when its
//! fan-out did, on the client's network when its conversion did; a range and a network
//! each only when the behaviour without the other's signal still reaches `block_score`
//! (a network that tries many ranges does not make each an attacked range). With the
//! defaults a pumping attack on one range is blocked within about
//! ten attempts (five get through before a step-up stops it); slower ones by about twenty,
//! refused from the sixth.
//!
//! # Modes
//!
//! * `enforce`: decisions and blocks are enforced; shadow blocks are ignored, so switching
//!   from shadow to enforce does not suddenly enforce what shadow mode imposed.
//! * `shadow`: the same decisions and blocks, marked shadow (nothing is refused); shadow
//!   blocks count like enforced ones, so shadow shows what enforce would do.
//! * `off`: nothing is read, counted or decided.

mod config;
mod provider;
mod score;
mod subject;

pub use config::{
    ConfigError, ConversionSignal, ConversionTier, CountSignal, DEFAULT_HIGH_RISK_COUNTRIES,
    FraudConfig, Mode, Tier,
};
pub use provider::{
    FRAUD_GUARD, MESSAGING_GEO_PERMISSION, VERIFY_GEO_PERMISSION, provider_verdict,
};
pub use score::{Observed, Outcome, approved, assess, block_targets, queries};
pub use subject::{HUNDRED_BLOCK_TAG, PhoneSubject, Subject, network_of};

#[cfg(test)]
mod simulation;
