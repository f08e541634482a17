//! Phone numbers parsed with libphonenumber's rules and kept in E.164.

use std::fmt;
use std::str::FromStr;

use phonenumber::country;

/// An ISO 3166-1 alpha-2 region known to libphonenumber (`US`, `GB`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region(country::Id);

/// Holds what was given, cut to a few characters: a region code has two, and the message
/// reaches callers and logs, so it never echoes a long input whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an ISO 3166-1 alpha-2 region code")]
pub struct RegionError(pub String);

impl RegionError {
    /// Characters of the input kept in the message.
    const ECHOED: usize = 8;

    fn of(raw: &str) -> RegionError {
        let mut echoed: String = raw.chars().take(Self::ECHOED).collect();
        if raw.chars().nth(Self::ECHOED).is_some() {
            echoed.push('…');
        }
        RegionError(echoed)
    }
}

impl Region {
    pub fn parse(raw: &str) -> Result<Self, RegionError> {
        let upper = raw.trim().to_ascii_uppercase();
        if upper.len() != 2 {
            return Err(RegionError::of(raw));
        }
        country::Id::from_str(&upper)
            .map(Region)
            .map_err(|_| RegionError::of(raw))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_ref()
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of line a number is, as far as the numbering plan tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NumberType {
    Mobile,
    FixedLine,
    FixedLineOrMobile,
    TollFree,
    PremiumRate,
    SharedCost,
    Voip,
    PersonalNumber,
    Pager,
    Uan,
    Voicemail,
    Other,
    Unknown,
}

impl NumberType {
    pub fn as_str(self) -> &'static str {
        match self {
            NumberType::Mobile => "mobile",
            NumberType::FixedLine => "fixed_line",
            NumberType::FixedLineOrMobile => "fixed_line_or_mobile",
            NumberType::TollFree => "toll_free",
            NumberType::PremiumRate => "premium_rate",
            NumberType::SharedCost => "shared_cost",
            NumberType::Voip => "voip",
            NumberType::PersonalNumber => "personal_number",
            NumberType::Pager => "pager",
            NumberType::Uan => "uan",
            NumberType::Voicemail => "voicemail",
            NumberType::Other => "other",
            NumberType::Unknown => "unknown",
        }
    }
}

/// A valid phone number in E.164 form, with what the numbering plan says about it.
/// Neither `{}` nor `{:?}` prints the number, only its mask.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber {
    e164: String,
    region: Option<Region>,
    number_type: NumberType,
    country_code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneNumberError {
    #[error("phone number is empty")]
    Empty,
    #[error("phone number is too long")]
    TooLong,
    #[error("not a phone number")]
    Unparseable,
    #[error("not a valid phone number for its region")]
    Invalid,
    #[error("phone numbers with an extension cannot receive codes")]
    Extension,
}

impl PhoneNumber {
    /// The longest raw input considered; anything longer is refused before parsing.
    const MAX_RAW_LEN: usize = 64;

    /// Parses what a user typed (`(415) 555-2671`, `+44 20 7946 0958`, `tel:+1-415-555-2671`)
    /// using `default_region` for numbers written without a country code.
    pub fn parse(raw: &str, default_region: Option<Region>) -> Result<Self, PhoneNumberError> {
        Self::parse_hinted(raw, default_region, true)
    }

    /// [`Self::parse`], with `hinted` false the slower way without a [`RegionHint`] (the
    /// tests hold both to one answer).
    fn parse_hinted(
        raw: &str,
        default_region: Option<Region>,
        hinted: bool,
    ) -> Result<Self, PhoneNumberError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(PhoneNumberError::Empty);
        }
        if raw.len() > Self::MAX_RAW_LEN {
            return Err(PhoneNumberError::TooLong);
        }
        // libphonenumber accepts letters as keypad digits ("1-800-FLOWERS"); a verification
        // destination typed with letters is far more likely a mistake, so refuse them.
        if raw
            .strip_prefix("tel:")
            .unwrap_or(raw)
            .chars()
            .any(|c| c.is_alphabetic())
        {
            return Err(PhoneNumberError::Unparseable);
        }
        // A number written in international format (its first digit-or-plus is a plus)
        // names its own country, and the default region must not change it (as in
        // libphonenumber); `phonenumber` would strip the default region's national prefix
        // from it (`+39 090…` typed in Germany lost Italy's leading zero and was refused).
        let international = raw
            .chars()
            .find(|c| matches!(c, '+' | '\u{ff0b}') || c.is_numeric())
            .is_some_and(|c| !c.is_numeric());
        let default_region = default_region.filter(|_| !international);
        let hint = match default_region {
            None if hinted => RegionHint::of(raw),
            _ => None,
        };
        let parsed = phonenumber::parse(
            default_region
                .map(|r| r.0)
                .or(hint.as_ref().map(|h| h.region)),
            raw,
        )
        .map_err(|_| PhoneNumberError::Unparseable)?;
        if parsed.extension().is_some() {
            return Err(PhoneNumberError::Extension);
        }
        let country_code = parsed.code().value();
        // The national significant number with its leading zeros (Italy's `06…`, Côte
        // d'Ivoire's `07…`): the numbering plan's patterns are written for it.
        let national = parsed.national().to_string();
        let classified = match hint {
            // The hint classified this very number already.
            Some(hint) if hint.code == country_code && hint.national == national => {
                Some((Some(Region(hint.region)), hint.number_type))
                    .filter(|(_, t)| *t != NumberType::Unknown)
            }
            _ => classify(country_code, &national),
        };
        let (region, number_type) = classified.ok_or(PhoneNumberError::Invalid)?;
        let e164 = format!("+{country_code}{national}");
        // A number written without `+` must be one its E.164 form names too: `phonenumber`
        // strips a national prefix after a `+` that it keeps after an international prefix
        // (Russia's `8`: `00 7 856…` typed in Germany is valid, `+7856…` is not), and the
        // E.164 form is what is stored, sent to Twilio and typed again by the user.
        if !raw.starts_with('+') && Self::parse(&e164, None).map(|n| n.e164) != Ok(e164.clone()) {
            return Err(PhoneNumberError::Invalid);
        }
        Ok(PhoneNumber {
            e164,
            region,
            number_type,
            country_code,
        })
    }

    /// A number this type wrote: `e164` as [`Self::e164`] gave it (say, decrypted from the
    /// store). The country code is read off the front (country codes are prefix-free) and
    /// the rest classified as [`Self::parse`] does, so for what `parse` wrote the result
    /// equals the parsed number, without running the parser again. Not for input: other
    /// strings skip the parser's handling of national prefixes (`+78…` is refused by
    /// `parse`, not here); what no region's plan knows is `None`.
    pub fn from_e164(e164: &str) -> Option<Self> {
        let digits = e164.strip_prefix('+')?;
        // Country codes start with 1-9.
        if digits.len() > Self::MAX_RAW_LEN
            || digits.starts_with('0')
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let (country_code, _, national) = split_country_code(digits)?;
        let (region, number_type) = classify(country_code, national)?;
        Some(PhoneNumber {
            e164: e164.to_owned(),
            region,
            number_type,
            country_code,
        })
    }

    /// The number as `+14155552671`.
    pub fn e164(&self) -> &str {
        &self.e164
    }

    pub fn region(&self) -> Option<Region> {
        self.region
    }

    pub fn number_type(&self) -> NumberType {
        self.number_type
    }

    /// The number's range: its E.164 form without the last [`Self::RANGE_DIGITS`] digits,
    /// keeping at least the country code and one digit (`+14155552671` → `+141555`).
    /// Ranges are what SMS pumping works through (a carrier's block of numbers), so limits,
    /// scoring and blocks use them; a range holds 100,000 numbers and, beside the mask's
    /// last four digits, still leaves one digit unknown.
    pub fn range_prefix(&self) -> &str {
        let digits = self.e164.len() - 1;
        let keep = digits
            .saturating_sub(Self::RANGE_DIGITS)
            .max(self.country_code_len() + 1);
        &self.e164[..(1 + keep).min(self.e164.len())]
    }

    /// How many trailing digits [`Self::range_prefix`] drops.
    pub const RANGE_DIGITS: usize = 5;

    /// The number without its last two digits: its block of 100 neighbours, for spotting
    /// runs of sequential numbers. Never shown: callers hash it ([`crate::BlindIndexKey::tag`]).
    pub fn hundred_block(&self) -> &str {
        &self.e164[..self.e164.len().saturating_sub(2).max(2)]
    }

    /// The country calling code (`1`, `44`, `225`).
    pub fn country_code(&self) -> u16 {
        self.country_code
    }

    fn country_code_len(&self) -> usize {
        self.country_code.to_string().len()
    }

    /// A mask safe for logs and responses: `+1415***2671`.
    pub fn masked(&self) -> String {
        let digits = &self.e164;
        let (keep_head, keep_tail) = if digits.len() >= 10 { (5, 4) } else { (3, 2) };
        format!(
            "{}***{}",
            &digits[..keep_head],
            &digits[digits.len() - keep_tail..]
        )
    }
}

/// The region `phonenumber` would find for a number written `+` and digits, found with the
/// patterns compiled here, so that `phonenumber::parse` can be given it.
///
/// Without a region, `phonenumber::parse` looks for one among the regions sharing the
/// number's country code (`source_for`: the first whose leading digits start the number,
/// or whose plan knows it), through its own pattern cache, which the regions of country
/// code 1 alone overflow; it was most of a start's time in parsing. Given the region it
/// would find, it parses the number the same way: after a `+`, a region only changes the
/// parse when its international dialling prefix starts the digits (`+1 011…`), and then
/// there is no hint. Codes of one region need none (`phonenumber` takes it at once).
#[derive(Debug, Clone)]
struct RegionHint {
    region: country::Id,
    code: u16,
    /// The national number as `source_for` sees it: without leading zeros.
    national: String,
    /// The type of `national` in `region` (`classify`'s answer for it).
    number_type: NumberType,
}

impl RegionHint {
    fn of(raw: &str) -> Option<RegionHint> {
        let digits = raw.strip_prefix('+')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (code, candidates, national) = split_country_code(digits)?;
        if candidates.len() < 2 || digits.starts_with('0') {
            return None;
        }
        let national = national.trim_start_matches('0');
        let (meta, number_type) = select_region(&candidates, national)?;
        let region = country::Id::from_str(meta.id()).ok()?;
        let idd_starts_the_digits = meta.international_prefix().is_some_and(|idd| {
            starts_with_match(idd.as_str(), digits, || {
                idd.find(digits).is_some_and(|m| m.start() == 0)
            })
        });
        (!idd_starts_the_digits).then(|| RegionHint {
            region,
            code,
            national: national.to_owned(),
            number_type,
        })
    }
}

/// The country code at the front of `digits` (a number's digits after its `+`), as
/// `phonenumber` reads one: the first of one to three digits the plan knows (country codes
/// are prefix-free); with the regions of that code and the national number after it.
fn split_country_code(digits: &str) -> Option<(u16, Vec<&'static phonenumber::Metadata>, &str)> {
    (1..=3.min(digits.len())).find_map(|len| {
        let code: u16 = digits[..len].parse().ok()?;
        let candidates = phonenumber::metadata::DATABASE.by_code(&code)?;
        Some((code, candidates, &digits[len..]))
    })
}

/// Of the regions sharing a country code, the one a national number belongs to: the first
/// whose leading digits start it, or (for a region without them) whose plan knows it; with
/// the number's type there (`Unknown` when the region was chosen by its leading digits and
/// its plan does not know the number).
fn select_region(
    candidates: &[&'static phonenumber::Metadata],
    national: &str,
) -> Option<(&'static phonenumber::Metadata, NumberType)> {
    candidates
        .iter()
        .find_map(|meta| match meta.leading_digits() {
            Some(pattern) => starts_with_match(pattern.as_str(), national, || {
                pattern.find(national).is_some_and(|m| m.start() == 0)
            })
            .then(|| (*meta, number_type(meta, national))),
            None => Some((*meta, number_type(meta, national)))
                .filter(|(_, t)| *t != NumberType::Unknown),
        })
}

/// The region a number belongs to and its type, as libphonenumber's `getRegionCodeForNumber`
/// and `getNumberType` decide them; `None` when no region's plan knows the number (it is
/// not valid). One pass over the candidate regions: `phonenumber`'s own accessors each
/// look the region up again and drop the national number's leading zeros.
fn classify(code: u16, national: &str) -> Option<(Option<Region>, NumberType)> {
    let candidates = phonenumber::metadata::DATABASE.by_code(&code)?;
    let (meta, number_type) = match candidates.as_slice() {
        [only] => (*only, number_type(only, national)),
        _ => select_region(&candidates, national)?,
    };
    if number_type == NumberType::Unknown {
        return None;
    }
    // Non-geographic codes (`+800`, `+882`) have the region "001": no region.
    let region = country::Id::from_str(meta.id()).ok().map(Region);
    Some((region, number_type))
}

/// The first type whose pattern matches, in libphonenumber's order.
fn number_type(meta: &'static phonenumber::Metadata, national: &str) -> NumberType {
    let d = meta.descriptors();
    let matches = |descriptor: Option<&'static phonenumber::metadata::Descriptor>| {
        descriptor.is_some_and(|d| descriptor_matches(d, national))
    };
    if !descriptor_matches(d.general(), national) {
        return NumberType::Unknown;
    }
    let ordered = [
        (d.premium_rate(), NumberType::PremiumRate),
        (d.toll_free(), NumberType::TollFree),
        (d.shared_cost(), NumberType::SharedCost),
        (d.voip(), NumberType::Voip),
        (d.personal_number(), NumberType::PersonalNumber),
        (d.pager(), NumberType::Pager),
        (d.uan(), NumberType::Uan),
        (d.voicemail(), NumberType::Voicemail),
    ];
    if let Some((_, t)) = ordered
        .into_iter()
        .find(|(descriptor, _)| matches(*descriptor))
    {
        return t;
    }
    if matches(d.fixed_line()) {
        let same_pattern = d.fixed_line().map(|f| f.national_number().as_str())
            == d.mobile().map(|m| m.national_number().as_str());
        if same_pattern || matches(d.mobile()) {
            return NumberType::FixedLineOrMobile;
        }
        return NumberType::FixedLine;
    }
    if matches(d.mobile()) {
        return NumberType::Mobile;
    }
    NumberType::Unknown
}

/// `Descriptor::is_match`: the number has one of the descriptor's possible lengths (when
/// it lists any) and its pattern matches from the number's first digit.
fn descriptor_matches(
    descriptor: &'static phonenumber::metadata::Descriptor,
    national: &str,
) -> bool {
    let lengths = descriptor.possible_length();
    if !lengths.is_empty() && !u16::try_from(national.len()).is_ok_and(|n| lengths.contains(&n)) {
        return false;
    }
    let pattern = descriptor.national_number();
    starts_with_match(pattern.as_str(), national, || {
        pattern.find(national).is_some_and(|m| m.start() == 0)
    })
}

/// Whether `pattern` matches `value` from its start, as `phonenumber` asks (`find` and a
/// match at 0), with the pattern compiled once by [`plan_patterns`]; `as_phonenumber` asks
/// `phonenumber` itself, for a pattern that does not compile here.
fn starts_with_match(
    pattern: &'static str,
    value: &str,
    as_phonenumber: impl FnOnce() -> bool,
) -> bool {
    match plan_patterns().get(pattern) {
        Some(regex) => regex.is_match(value),
        None => as_phonenumber(),
    }
}

/// The numbering plan's patterns, compiled once each, anchored at the start.
///
/// `phonenumber` keeps its compiled patterns in one LRU of 100 behind a mutex; the regions
/// that share country code 1 alone have more patterns than that, so under load it threw
/// compiled patterns away and built them (and their lazy DFAs) again: about 6% of a start's
/// CPU, a third of it rebuilding automata. These are kept for the process's life. A region
/// has at most a dozen patterns and the plan a few thousand; should the map ever pass
/// [`PlanPatterns::MAX`] (it cannot with the bundled plan), it starts over.
struct PlanPatterns {
    compiled:
        std::sync::RwLock<std::collections::HashMap<PatternKey, std::sync::Arc<regex::Regex>>>,
}

/// A pattern of the bundled plan, known by where it lives: its text never moves or changes
/// (it is `'static`), so its address names it, and a lookup does not hash the pattern's
/// text (the United States' fixed-line pattern alone is a few kilobytes).
#[derive(Clone, Copy)]
struct PatternKey(&'static str);

impl PartialEq for PatternKey {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}

impl Eq for PatternKey {}

impl std::hash::Hash for PatternKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(self.0, state);
    }
}

impl PlanPatterns {
    const MAX: usize = 8192;

    /// The compiled form of `pattern`; `None` when it does not compile here (the caller
    /// then asks `phonenumber`).
    fn get(&self, pattern: &'static str) -> Option<std::sync::Arc<regex::Regex>> {
        let key = PatternKey(pattern);
        if let Ok(compiled) = self.compiled.read()
            && let Some(regex) = compiled.get(&key)
        {
            return Some(std::sync::Arc::clone(regex));
        }
        let regex = std::sync::Arc::new(
            regex::RegexBuilder::new(&format!("^(?:{pattern})"))
                .ignore_whitespace(true)
                .build()
                .ok()?,
        );
        if let Ok(mut compiled) = self.compiled.write() {
            if compiled.len() >= Self::MAX {
                compiled.clear();
            }
            compiled.insert(key, std::sync::Arc::clone(&regex));
        }
        Some(regex)
    }
}

fn plan_patterns() -> &'static PlanPatterns {
    static PATTERNS: std::sync::OnceLock<PlanPatterns> = std::sync::OnceLock::new();
    PATTERNS.get_or_init(|| PlanPatterns {
        compiled: std::sync::RwLock::new(std::collections::HashMap::new()),
    })
}

impl fmt::Display for PhoneNumber {
    /// Prints the mask, never the number: a `PhoneNumber` in a format string cannot leak.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for PhoneNumber {
    /// Like a derived `Debug`, with the mask in place of the number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhoneNumber")
            .field("e164", &self.masked())
            .field("region", &self.region)
            .field("number_type", &self.number_type)
            .field("country_code", &self.country_code)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us() -> Option<Region> {
        Region::parse("US").ok()
    }

    fn check(raw: &str, region: Option<Region>, expected: Result<&str, PhoneNumberError>) {
        let got = PhoneNumber::parse(raw, region);
        assert_eq!(
            got.as_ref().map(PhoneNumber::e164).map_err(Clone::clone),
            expected,
            "{raw}"
        );
    }

    #[test]
    fn normalises_to_e164() {
        check("(415) 555-2671", us(), Ok("+14155552671"));
        check("+1 415 555 2671", None, Ok("+14155552671"));
        check("  +44 20 7946 0958 ", us(), Ok("+442079460958"));
        check("tel:+1-415-555-2671", None, Ok("+14155552671"));
        check(
            "020 7946 0958",
            Region::parse("gb").ok(),
            Ok("+442079460958"),
        );
    }

    #[test]
    fn refuses_what_is_not_a_number() {
        check("", us(), Err(PhoneNumberError::Empty));
        check("not a number", us(), Err(PhoneNumberError::Unparseable));
        check("1-800-FLOWERS", us(), Err(PhoneNumberError::Unparseable));
        check("+1 415", None, Err(PhoneNumberError::Invalid));
        check("(415) 555-2671", None, Err(PhoneNumberError::Unparseable));
        check(&"1".repeat(80), us(), Err(PhoneNumberError::TooLong));
    }

    #[test]
    fn a_number_is_accepted_only_when_its_e164_form_is() {
        // Found by the `phone` fuzz target: after Germany's international prefix this was
        // `+78561728394`, a Russian fixed line, which itself does not parse (the `8` after
        // `+7` is taken for Russia's national prefix).
        let de = Region::parse("DE").ok();
        check("+78561728394", None, Err(PhoneNumberError::Invalid));
        check("0078561728394", de, Err(PhoneNumberError::Invalid));
        // International prefixes that name a valid E.164 number still parse.
        check("0044 20 7946 0958", de, Ok("+442079460958"));
        check("011 44 20 7946 0958", us(), Ok("+442079460958"));
    }

    #[test]
    fn the_default_region_does_not_change_a_number_written_with_a_plus() {
        // Found by the `phone` fuzz target: `00390-0090-.789` typed in Germany is
        // `+39090789`, an Italian fixed line, and that E.164 form typed in Germany was
        // refused: the parser took Italy's leading zero for Germany's national prefix.
        let de = Region::parse("DE").ok();
        check("00390-0090-.789", de, Ok("+39090789"));
        for raw in [
            "+39090789",
            "tel:+39090789",
            "(+39) 090789",
            "\u{ff0b}39090789",
        ] {
            check(raw, de, Ok("+39090789"));
            assert_eq!(
                PhoneNumber::parse(raw, de),
                PhoneNumber::parse(raw, None),
                "{raw}"
            );
        }
        check("+390612345678", de, Ok("+390612345678"));
        check("+442079460958", de, Ok("+442079460958"));
    }

    #[test]
    fn keeps_number_type_and_region() {
        let uk_mobile = PhoneNumber::parse("+447400123456", None).expect("valid UK mobile");
        assert_eq!(uk_mobile.number_type(), NumberType::Mobile);
        assert_eq!(
            uk_mobile.region().map(|r| r.to_string()).as_deref(),
            Some("GB")
        );
        let uk_premium = PhoneNumber::parse("+449061234567", None).expect("valid UK premium");
        assert_eq!(uk_premium.number_type(), NumberType::PremiumRate);
    }

    #[test]
    fn numbers_with_a_national_leading_zero_keep_their_region_and_type() {
        let rome = PhoneNumber::parse("+390612345678", None).expect("valid Rome fixed line");
        assert_eq!(rome.e164(), "+390612345678");
        assert_eq!(rome.region().map(|r| r.to_string()).as_deref(), Some("IT"));
        assert_eq!(rome.number_type(), NumberType::FixedLine);
        let abidjan = PhoneNumber::parse("+2250707123456", None).expect("valid CI mobile");
        assert_eq!(
            abidjan.region().map(|r| r.to_string()).as_deref(),
            Some("CI")
        );
        assert_eq!(abidjan.number_type(), NumberType::Mobile);
        let vatican = PhoneNumber::parse("+390669812345", None).expect("valid Vatican line");
        assert_eq!(
            vatican.region().map(|r| r.to_string()).as_deref(),
            Some("VA")
        );
    }

    #[test]
    fn shared_country_codes_find_their_region() {
        let region = |raw: &str| {
            PhoneNumber::parse(raw, None)
                .expect("valid")
                .region()
                .map(|r| r.to_string())
        };
        assert_eq!(region("+14155552671").as_deref(), Some("US"));
        assert_eq!(region("+16135550123").as_deref(), Some("CA"));
        assert_eq!(region("+18092345678").as_deref(), Some("DO"));
        assert_eq!(region("+447400123456").as_deref(), Some("GB"));
        assert_eq!(region("+441481256789").as_deref(), Some("GG"));
        // Non-geographic numbers have a country code and no region.
        let freephone = PhoneNumber::parse("+80012345678", None).expect("valid +800");
        assert_eq!(freephone.region(), None);
        assert_eq!(freephone.number_type(), NumberType::TollFree);
    }

    #[test]
    fn numbers_of_shared_country_codes_get_a_region_hint() {
        let hint = |raw: &str| RegionHint::of(raw).map(|h| (h.region, h.number_type));
        assert_eq!(
            hint("+14155552671"),
            Some((country::Id::US, NumberType::FixedLineOrMobile))
        );
        assert_eq!(hint("+16135550123").map(|h| h.0), Some(country::Id::CA));
        assert_eq!(hint("+447400123456").map(|h| h.0), Some(country::Id::GB));
        // One region for the code: `phonenumber` finds it at once.
        assert_eq!(hint("+33612345678"), None);
        // The region's international prefix after the `+` changes the parse: no hint.
        assert_eq!(hint("+1011441234567"), None);
        // Not `+` and digits alone.
        assert_eq!(hint("+1 415 555 2671"), None);
        assert_eq!(hint("4155552671"), None);
    }

    #[test]
    fn masks_the_middle() {
        let n = PhoneNumber::parse("+14155552671", None).expect("valid");
        assert_eq!(n.masked(), "+1415***2671");
        assert_eq!(n.to_string(), "+1415***2671");
        let debug = format!("{n:?} {:?}", Some(&n));
        assert!(!debug.contains("5552671"), "{debug}");
        assert!(debug.contains("\"+1415***2671\""), "{debug}");
    }

    #[test]
    fn regions_are_iso_codes() {
        assert!(Region::parse("us").is_ok());
        assert!(Region::parse("USA").is_err());
        assert!(Region::parse("ZZ").is_err());
        // What is echoed back is cut short.
        assert_eq!(Region::parse("ZZ"), Err(RegionError("ZZ".into())));
        let long = "+14155552671".repeat(1000);
        let message = Region::parse(&long).expect_err("not a region").to_string();
        assert_eq!(
            message,
            "`+1415555…` is not an ISO 3166-1 alpha-2 region code"
        );
    }

    fn library_type(t: phonenumber::Type) -> NumberType {
        use phonenumber::Type as T;
        match t {
            T::Mobile => NumberType::Mobile,
            T::FixedLine => NumberType::FixedLine,
            T::FixedLineOrMobile => NumberType::FixedLineOrMobile,
            T::TollFree => NumberType::TollFree,
            T::PremiumRate => NumberType::PremiumRate,
            T::SharedCost => NumberType::SharedCost,
            T::Voip => NumberType::Voip,
            T::PersonalNumber => NumberType::PersonalNumber,
            T::Pager => NumberType::Pager,
            T::Uan => NumberType::Uan,
            T::Voicemail => NumberType::Voicemail,
            T::Unknown => NumberType::Unknown,
            _ => NumberType::Other,
        }
    }

    proptest::proptest! {
        /// Where the national number has no leading zero (the case `phonenumber`'s own
        /// accessors get right), the one-pass classification agrees with them.
        #[test]
        fn classification_agrees_with_libphonenumber(
            code in proptest::sample::select(vec![1u16, 7, 33, 39, 44, 49, 61, 225, 234, 262, 590, 800]),
            national in "[1-9][0-9]{5,11}",
        ) {
            let raw = format!("+{code}{national}");
            let lib = phonenumber::parse(None, &raw).ok().filter(|p| p.extension().is_none());
            let ours = PhoneNumber::parse(&raw, None).ok();
            proptest::prop_assert_eq!(ours.is_some(), lib.as_ref().is_some_and(|p| p.is_valid()));
            if let (Some(ours), Some(lib)) = (ours, lib) {
                proptest::prop_assert_eq!(ours.e164(), lib.format().mode(phonenumber::Mode::E164).to_string());
                proptest::prop_assert_eq!(ours.region().map(|r| r.0), lib.country().id());
                let lib_type = lib.number_type(&phonenumber::metadata::DATABASE);
                proptest::prop_assert_eq!(ours.number_type(), library_type(lib_type));
            }
        }

        /// A number written `+` and digits parses the same with the region hint as without.
        #[test]
        fn the_region_hint_changes_no_answer(
            code in proptest::sample::select(vec![1u16, 7, 44, 47, 61, 212, 262, 290, 358, 590, 599, 33]),
            national in "(011|0|00|1)?[0-9]{0,13}",
        ) {
            let raw = format!("+{code}{national}");
            proptest::prop_assert_eq!(
                PhoneNumber::parse_hinted(&raw, None, true),
                PhoneNumber::parse_hinted(&raw, None, false)
            );
        }

        /// What `parse` gives, `from_e164` gives back from its E.164 form.
        #[test]
        fn from_e164_gives_back_what_parse_gave(
            code in proptest::sample::select(vec![1u16, 7, 33, 39, 44, 49, 61, 225, 234, 262, 590, 800, 882]),
            national in "[0-9]{4,13}",
        ) {
            if let Ok(parsed) = PhoneNumber::parse(&format!("+{code}{national}"), None) {
                proptest::prop_assert_eq!(PhoneNumber::from_e164(parsed.e164()), Some(parsed));
            }
        }

        #[test]
        fn from_e164_keeps_its_input_and_never_panics(raw in "[+]?[0-9]{0,16}|\\PC{0,24}") {
            if let Some(n) = PhoneNumber::from_e164(&raw) {
                proptest::prop_assert_eq!(n.e164(), raw.as_str());
            }
        }

        #[test]
        fn never_panics_and_output_is_e164(raw in "\\PC{0,40}") {
            if let Ok(n) = PhoneNumber::parse(&raw, us()) {
                proptest::prop_assert!(n.e164().starts_with('+'));
                proptest::prop_assert!(n.e164()[1..].bytes().all(|b| b.is_ascii_digit()));
                let again = PhoneNumber::parse(n.e164(), None);
                proptest::prop_assert_eq!(again.as_ref().map(PhoneNumber::e164), Ok(n.e164()));
            }
        }
    }
}

#[cfg(test)]
mod range_tests {
    use super::*;

    #[test]
    fn ranges_drop_the_last_five_digits_but_keep_the_country_code() {
        let p = |raw: &str| PhoneNumber::parse(raw, None).expect("valid");
        assert_eq!(p("+14155552671").range_prefix(), "+141555");
        assert_eq!(p("+14155552671").hundred_block(), "+141555526");
        assert_eq!(p("+14155552671").country_code(), 1);
        assert_eq!(p("+447911123456").range_prefix(), "+4479111");
        assert_eq!(p("+2250707123456").range_prefix(), "+22507071");
        // Short national numbers keep their country code and one digit.
        assert_eq!(p("+3725123456").range_prefix(), "+37251");
    }
}
