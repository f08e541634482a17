//! The Twilio Verify V2 adapter: implements `domain::ports::VerifyProvider` over Twilio's REST
//! API (or anything that speaks it, such as the local sandbox or Prism).
//!
//! Twilio's wire types stay private to this crate; callers see domain types and
//! [`TwilioError`], which names each Twilio error code the gateway acts on and converts into
//! the domain's `ProviderError`. Calls are repeated only where that cannot send a second code
//! or spend a second check.
//!
//! [`webhook`] checks the signatures of the webhooks Twilio sends back (message status
//! callbacks and Verify Events) for the HTTP server that receives them.

mod client;
mod config;
mod error;
pub mod events;
mod retry;
mod sid;
pub mod webhook;
mod wire;

pub use client::{RequestHeaders, TwilioVerify};
pub use config::{Credentials, TwilioConfig};
pub use error::{ApiError, TwilioError};
