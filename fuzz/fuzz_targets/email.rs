//! `domain::email`: `Email::parse` and the mailbox destinations are compared by.

#![no_main]

use domain::Email;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(email) = Email::parse(raw) else {
        return;
    };
    let address = email.as_str();
    assert!(address.len() <= 254, "{address}");
    // Parsing is idempotent: the address as kept parses to itself.
    assert_eq!(Email::parse(address).as_ref(), Ok(&email), "{raw:?}");
    // The mailbox is lower-case, and is its own mailbox: two spellings of one inbox meet
    // in one value, so per-destination limits cannot be stepped around by case or a tag.
    let mailbox = email.mailbox();
    assert_eq!(mailbox.to_lowercase(), mailbox, "{raw:?}");
    // ASCII case only: Unicode's upper case is not undone by its lower case (`ß`, `SS`).
    if let Ok(upper) = Email::parse(&address.to_ascii_uppercase()) {
        assert_eq!(upper.mailbox(), mailbox, "{raw:?} upper-cased");
    }
    if let Ok(again) = Email::parse(&mailbox) {
        assert_eq!(again.mailbox(), mailbox, "{raw:?}");
    }
    // The mask keeps the domain and nothing of the local part past its first character.
    let masked = email.to_string();
    assert!(masked.contains("***@"), "{masked}");
});
