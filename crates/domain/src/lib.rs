//! The vocabulary of verify-gateway: value types parsed at the edge, the verification
//! state machine, destination protection (blind index and encryption) and the port traits
//! that adapters implement.
//!
//! Nothing in this crate touches the network, the disk or the clock: time and randomness
//! are arguments.

pub mod abuse;
pub mod bus;
mod channel;
pub mod crypto;
pub mod delivery;
mod destination;
mod email;
pub mod events;
mod id;
mod phone;
pub mod ports;
mod purpose;
mod verification;

pub use channel::{Channel, ChannelParseError};
pub use crypto::{BlindIndexKey, DestinationHash, EncryptionKey, Keyring, SealedDestination};
pub use destination::Destination;
pub use email::{Email, EmailError};
pub use id::{IdError, VerificationId};
pub use phone::{NumberType, PhoneNumber, PhoneNumberError, Region, RegionError};
pub use purpose::{Purpose, PurposeError, is_config_name};
pub use verification::{
    CheckOutcome, DeliveryVerdict, IdempotencyKey, IdempotencyKeyError, IgnoredBecause, Locale,
    LocaleError, NEVER_SENT, NewVerification, OtpCode, OtpCodeError, Transition, TransitionError,
    Verification, VerificationRecord, VerificationStatus,
};
