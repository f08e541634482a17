//! `domain::phone`: `Region::parse` and `PhoneNumber::parse` on what a caller may send.
//!
//! Input: the default region on the first line (empty for none), the raw number after it;
//! without a newline the whole input is the number, parsed without a default region.

#![no_main]

use domain::{PhoneNumber, Region};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (region_line, raw) = text.split_once('\n').unwrap_or(("", text));

    let region = Region::parse(region_line).ok();
    if let Some(region) = region {
        // A region is two upper-case letters naming what was typed, and reads back as itself.
        let code = region.as_str();
        assert!(
            code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()),
            "{code}"
        );
        assert!(
            region_line.trim().eq_ignore_ascii_case(code),
            "{region_line:?} -> {code}"
        );
        assert_eq!(Region::parse(code), Ok(region));
        assert_eq!(Region::parse(&code.to_ascii_lowercase()), Ok(region));
    }

    let Ok(number) = PhoneNumber::parse(raw, region) else {
        return;
    };
    let e164 = number.e164();
    assert!(e164.starts_with('+'), "{e164}");
    assert!(
        e164.len() > 2 && e164[1..].bytes().all(|b| b.is_ascii_digit()),
        "{e164}"
    );
    assert!(
        e164[1..].starts_with(&number.country_code().to_string()),
        "{e164}"
    );
    // The E.164 form is the number: it parses back to the same number (region and type
    // included), whatever the default region, and the store's path without the parser
    // (`from_e164`) agrees.
    assert_eq!(
        PhoneNumber::parse(e164, None).as_ref(),
        Ok(&number),
        "{raw:?}"
    );
    if let Some(region) = region {
        assert_eq!(
            PhoneNumber::parse(e164, Some(region)).as_ref(),
            Ok(&number),
            "{raw:?}"
        );
    }
    assert_eq!(
        PhoneNumber::from_e164(e164).as_ref(),
        Some(&number),
        "{raw:?}"
    );
    // What is logged and keyed never holds the whole number.
    assert!(e164.starts_with(number.range_prefix()));
    assert!(e164.starts_with(number.hundred_block()));
    assert!(number.range_prefix().len() < e164.len());
    let masked = number.to_string();
    assert!(masked.contains("***") && !masked.contains(e164), "{masked}");
});
