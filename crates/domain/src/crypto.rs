//! Protection of destinations at rest: an HMAC-SHA256 blind index for lookups and logs,
//! and AES-256-GCM encryption tagged with a key id so keys can rotate.
//!
//! A ciphertext is bound to its verification: the associated data covers the key id and
//! the verification id, so a ciphertext copied into another row (by anyone who can write
//! the database but holds no key) does not open there, rather than sending that row's
//! code to another person. Rows sealed before the binding carry the key id as
//! `unbound:<key id>` (the migration that introduced it renamed them; key ids cannot hold
//! a colon): they still open, with the key id alone as associated data, until
//! `verify-gateway reencrypt` re-seals them, which it does as for any key that is not the
//! current one.
//!
//! Nonces come in as arguments (this crate has no randomness); callers must pass 96 fresh
//! random bits per encryption.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Destination, Email, PhoneNumber, VerificationId};

/// The prefix of the stored key id of a ciphertext sealed before ciphertexts were bound to
/// their verification (associated data: the key id alone).
const UNBOUND: &str = "unbound:";

/// The secret key of the blind index. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct BlindIndexKey([u8; 32]);

impl BlindIndexKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        BlindIndexKey(bytes)
    }

    /// The keyed hash of a destination. Equal destinations give equal hashes under one key,
    /// which is what lookups, limits and logs need; the destination cannot be read back.
    pub fn hash(&self, destination: &Destination) -> DestinationHash {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC-SHA256 takes a key of any length");
        mac.update(indexed(destination).as_bytes());
        DestinationHash(hex::encode(mac.finalize().into_bytes()))
    }

    /// The keyed hash of another identifier that must not be stored or logged in clear
    /// (a caller's user id, a block of phone numbers), as 32 hex digits. `domain` separates
    /// uses, so equal values of different kinds hash apart, and apart from destinations.
    pub fn tag(&self, domain: &str, value: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC-SHA256 takes a key of any length");
        mac.update(b"tag\0");
        mac.update(domain.as_bytes());
        mac.update(b"\0");
        mac.update(value.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }
}

impl fmt::Debug for BlindIndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindIndexKey([redacted])")
    }
}

/// The hex HMAC of a destination: safe to store, index and log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DestinationHash(String);

impl DestinationHash {
    /// Wraps a hash read back from storage.
    pub fn from_stored(hex: String) -> Self {
        DestinationHash(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 16 hex digits: enough to correlate log lines.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(16)]
    }
}

impl fmt::Display for DestinationHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One AES-256 key with the id stored beside every ciphertext it made.
#[derive(Clone)]
pub struct EncryptionKey {
    id: String,
    cipher: Aes256Gcm,
}

impl EncryptionKey {
    pub fn new(id: impl Into<String>, bytes: [u8; 32]) -> Self {
        EncryptionKey {
            id: id.into(),
            cipher: Aes256Gcm::new(&Key::<Aes256Gcm>::from(bytes)),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptionKey {{ id: {:?}, key: [redacted] }}", self.id)
    }
}

/// A destination as stored: ciphertext (nonce, then sealed bytes and tag) and its key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedDestination {
    pub key_id: String,
    pub ciphertext: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("no key with id `{0}` in the keyring")]
    UnknownKey(String),
    #[error("ciphertext does not open with key `{0}`")]
    Open(String),
    #[error("decrypted destination is not valid")]
    Corrupt,
}

/// The current key, which encrypts, and older keys, which still decrypt.
#[derive(Debug, Clone)]
pub struct Keyring {
    current: EncryptionKey,
    previous: Vec<EncryptionKey>,
}

impl Keyring {
    pub fn new(current: EncryptionKey, previous: Vec<EncryptionKey>) -> Self {
        Keyring { current, previous }
    }

    pub fn current_id(&self) -> &str {
        self.current.id()
    }

    /// Encrypts with the current key, bound to the verification `row`: the ciphertext
    /// opens only for that verification. `nonce` must be fresh random bytes.
    pub fn seal(
        &self,
        destination: &Destination,
        row: &VerificationId,
        nonce: [u8; 12],
    ) -> SealedDestination {
        let key = &self.current;
        let plain = canonical(destination);
        let sealed = key
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: &bound_to(&key.id, row),
                },
            )
            .expect("AES-GCM encryption of a short message cannot fail");
        let mut ciphertext = Vec::with_capacity(12 + sealed.len());
        ciphertext.extend_from_slice(&nonce);
        ciphertext.extend_from_slice(&sealed);
        SealedDestination {
            key_id: key.id.clone(),
            ciphertext,
        }
    }

    /// Decrypts the destination of the verification `row` with whichever key of the ring
    /// made the ciphertext. A ciphertext sealed for another verification does not open.
    pub fn open(
        &self,
        sealed: &SealedDestination,
        row: &VerificationId,
    ) -> Result<Destination, CryptoError> {
        let (key_id, aad) = match sealed.key_id.strip_prefix(UNBOUND) {
            Some(key_id) => (key_id, key_id.as_bytes().to_vec()),
            None => (sealed.key_id.as_str(), bound_to(&sealed.key_id, row)),
        };
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey(sealed.key_id.clone()))?;
        if sealed.ciphertext.len() < 12 {
            return Err(CryptoError::Open(sealed.key_id.clone()));
        }
        let (nonce, body) = sealed.ciphertext.split_at(12);
        let nonce: [u8; 12] = nonce
            .try_into()
            .map_err(|_| CryptoError::Open(sealed.key_id.clone()))?;
        let plain = key
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Open(sealed.key_id.clone()))?;
        let text = String::from_utf8(plain).map_err(|_| CryptoError::Corrupt)?;
        from_canonical(&text).ok_or(CryptoError::Corrupt)
    }
}

/// The associated data of a bound ciphertext: a label, the key id and the verification's
/// 16 id bytes (key ids never hold the NUL that ends them).
fn bound_to(key_id: &str, row: &VerificationId) -> Vec<u8> {
    const LABEL: &[u8] = b"destination\0";
    let mut aad = Vec::with_capacity(LABEL.len() + key_id.len() + 1 + 16);
    aad.extend_from_slice(LABEL);
    aad.extend_from_slice(key_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(row.as_uuid().as_bytes());
    aad
}

/// The text that is hashed and encrypted: the kind, then the canonical destination, so a
/// phone number and an email address can never share a hash.
fn canonical(destination: &Destination) -> String {
    match destination {
        Destination::Phone(p) => format!("phone:{}", p.e164()),
        Destination::Email(e) => format!("email:{}", e.as_str()),
    }
}

/// The text the blind index hashes: [`canonical`], with an email address as the mailbox it
/// reaches ([`Email::mailbox`]), so `Bob@x.io` and `bob+otp@x.io` are one destination to
/// every lookup and limit.
fn indexed(destination: &Destination) -> String {
    match destination {
        Destination::Phone(_) => canonical(destination),
        Destination::Email(e) => format!("email:{}", e.mailbox()),
    }
}

fn from_canonical(text: &str) -> Option<Destination> {
    if let Some(e164) = text.strip_prefix("phone:") {
        PhoneNumber::from_e164(e164).map(Destination::Phone)
    } else if let Some(email) = text.strip_prefix("email:") {
        Email::parse(email).ok().map(Destination::Email)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone() -> Destination {
        Destination::Phone(PhoneNumber::parse("+14155552671", None).expect("valid"))
    }

    fn row(n: u128) -> VerificationId {
        VerificationId::from_uuid(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn one_mailbox_is_one_blind_index() {
        let key = BlindIndexKey::new([3; 32]);
        let hash = |raw: &str| key.hash(&Destination::Email(Email::parse(raw).expect("valid")));
        assert_eq!(hash("Bob@x.io"), hash("bob@x.io"));
        assert_eq!(hash("BOB+otp@x.io"), hash("bob@x.io"));
        assert_ne!(hash("bob@x.io"), hash("bobby@x.io"));
    }

    #[test]
    fn blind_index_is_keyed_and_stable() {
        let a = BlindIndexKey::new([1; 32]);
        let b = BlindIndexKey::new([2; 32]);
        assert_eq!(a.hash(&phone()), a.hash(&phone()));
        assert_ne!(a.hash(&phone()), b.hash(&phone()));
        assert_eq!(a.hash(&phone()).as_str().len(), 64);
        assert!(!a.hash(&phone()).as_str().contains("4155552671"));
        assert_eq!(format!("{a:?}"), "BlindIndexKey([redacted])");
    }

    #[test]
    fn sealed_destination_opens_after_rotation() {
        let old = Keyring::new(EncryptionKey::new("k1", [7; 32]), vec![]);
        let sealed = old.seal(&phone(), &row(1), [3; 12]);
        assert_eq!(sealed.key_id, "k1");
        assert!(
            !String::from_utf8_lossy(&sealed.ciphertext).contains("4155552671"),
            "ciphertext must not carry the number"
        );
        let rotated = Keyring::new(
            EncryptionKey::new("k2", [8; 32]),
            vec![EncryptionKey::new("k1", [7; 32])],
        );
        assert_eq!(rotated.open(&sealed, &row(1)), Ok(phone()));
        assert_eq!(rotated.seal(&phone(), &row(1), [4; 12]).key_id, "k2");
    }

    #[test]
    fn a_ciphertext_opens_only_for_its_own_verification() {
        let ring = Keyring::new(EncryptionKey::new("k1", [7; 32]), vec![]);
        let sealed = ring.seal(&phone(), &row(1), [3; 12]);
        assert_eq!(ring.open(&sealed, &row(1)), Ok(phone()));
        // Copied into another row, it is refused rather than read as that row's.
        assert_eq!(
            ring.open(&sealed, &row(2)),
            Err(CryptoError::Open("k1".into()))
        );
        // Nor does it pass for a ciphertext of the scheme without binding.
        let relabelled = SealedDestination {
            key_id: "unbound:k1".into(),
            ciphertext: sealed.ciphertext.clone(),
        };
        assert_eq!(
            ring.open(&relabelled, &row(1)),
            Err(CryptoError::Open("unbound:k1".into()))
        );
    }

    #[test]
    fn ciphertexts_sealed_before_the_binding_still_open() {
        // What the key id alone as associated data gave, as rows written before the
        // binding hold it (their key id renamed `unbound:k1` by the migration).
        let key = Aes256Gcm::new(&Key::<Aes256Gcm>::from([7; 32]));
        let nonce = [5u8; 12];
        let body = key
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: b"phone:+14155552671",
                    aad: b"k1",
                },
            )
            .expect("seals");
        let legacy = SealedDestination {
            key_id: "unbound:k1".into(),
            ciphertext: [nonce.as_slice(), &body].concat(),
        };
        let ring = Keyring::new(
            EncryptionKey::new("k2", [8; 32]),
            vec![EncryptionKey::new("k1", [7; 32])],
        );
        assert_eq!(ring.open(&legacy, &row(9)), Ok(phone()));
        let missing = Keyring::new(EncryptionKey::new("k2", [8; 32]), vec![]);
        assert_eq!(
            missing.open(&legacy, &row(9)),
            Err(CryptoError::UnknownKey("unbound:k1".into()))
        );
    }

    #[test]
    fn tampering_and_unknown_keys_are_errors() {
        let ring = Keyring::new(EncryptionKey::new("k1", [7; 32]), vec![]);
        let mut sealed = ring.seal(&phone(), &row(1), [3; 12]);
        let last = sealed.ciphertext.len() - 1;
        sealed.ciphertext[last] ^= 1;
        assert_eq!(
            ring.open(&sealed, &row(1)),
            Err(CryptoError::Open("k1".into()))
        );
        sealed.key_id = "k9".into();
        assert_eq!(
            ring.open(&sealed, &row(1)),
            Err(CryptoError::UnknownKey("k9".into()))
        );
        let short = SealedDestination {
            key_id: "k1".into(),
            ciphertext: vec![1, 2],
        };
        assert_eq!(
            ring.open(&short, &row(1)),
            Err(CryptoError::Open("k1".into()))
        );
    }
}
