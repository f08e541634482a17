//! Destinations and client IPs for the load benchmarks (`bench flows`, `bench memory`)
//! that the shipped limits do not refuse, drawn as the shared yardstick's load generator
//! draws them: distinct US numbers libphonenumber calls valid fixed-line or mobile numbers,
//! spread over ranges (the number without its last five digits: area code and the
//! exchange's first two digits), at most one per block of 100, and a distinct public IPv4
//! address per start.
//!
//! Ranges are visited round-robin in a shuffled order, so `n` numbers put at most
//! ⌈n / ranges⌉ in any range (one each up to about 28,000 numbers), and consecutive starts
//! go to unrelated area codes.

use std::net::Ipv4Addr;

use phonenumber::metadata::DATABASE;

/// A fixed seed: every run draws the same numbers, and each run has a fresh database.
const SEED: u64 = 0x5EED_0F1A_B5ED_0001;

/// splitmix64: small, fast and reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Whether the national number `+1<national>` is one a US user would verify.
fn us_fixed_or_mobile(national: u64) -> bool {
    phonenumber::parse(None, format!("+1{national}")).is_ok_and(|n| {
        n.is_valid()
            && n.country().id() == Some(phonenumber::country::Id::US)
            && matches!(
                n.number_type(&DATABASE),
                phonenumber::Type::Mobile
                    | phonenumber::Type::FixedLine
                    | phonenumber::Type::FixedLineOrMobile
            )
    })
}

/// One range and how far its numbers have been handed out. Its 1,000 blocks of 100 are
/// its 10 exchanges × 100 line prefixes; each number takes one block, exchange after
/// exchange, so a range that is used lightly costs one libphonenumber probe.
struct Range {
    /// The area code and the exchange's first two digits (`41555` for `+1 415 55x xxxx`).
    prefix: u32,
    /// The exchange digit to start from, and the order of line prefixes within an exchange.
    first_digit: u16,
    line_offset: u16,
    /// Blocks handed out or skipped so far, of 1,000.
    cursor: u16,
    /// Numbers handed out.
    taken: u16,
    /// Exchange digits probed, and those libphonenumber accepted (bit `d` for digit `d`).
    probed: u16,
    accepted: u16,
}

impl Range {
    fn new(prefix: u32, rng: &mut Rng) -> Self {
        Range {
            prefix,
            first_digit: rng.below(10) as u16,
            line_offset: rng.below(100) as u16,
            cursor: 0,
            taken: 0,
            probed: 0,
            accepted: 0,
        }
    }

    fn national(&self, digit: u16, line: u16) -> u64 {
        u64::from(self.prefix) * 100_000 + u64::from(digit) * 10_000 + u64::from(line)
    }

    /// Whether numbers of the exchange ending in `digit` may be handed out. libphonenumber's
    /// North American metadata decides validity and type by area code and exchange, never
    /// by the line number, so one probe stands for the exchange's 10,000 lines (a test
    /// below checks every number of a sample).
    fn exchange_ok(&mut self, digit: u16) -> Option<bool> {
        let exchange = (self.prefix % 100) * 10 + u32::from(digit);
        // N11 exchanges are service codes and 555 is for fiction: valid to libphonenumber,
        // but no user has such a number (the load generator leaves them out too).
        if exchange % 100 == 11 || exchange == 555 {
            return Some(false);
        }
        let bit = 1 << digit;
        if self.probed & bit == 0 {
            self.probed |= bit;
            if us_fixed_or_mobile(self.national(digit, 0)) {
                self.accepted |= bit;
            } else if self.accepted == 0 {
                // The first exchange probed speaks for the range (libphonenumber decides by
                // its first four digits today), so a refused range costs one probe, not ten.
                return None;
            }
        }
        Some(self.accepted & bit != 0)
    }

    /// The range's next number, or `None` when it has none left.
    fn next_number(&mut self) -> Option<u64> {
        while self.cursor < 1000 {
            let step = self.cursor / 100;
            let digit = (self.first_digit + step) % 10;
            if !self.exchange_ok(digit)? {
                self.cursor = (step + 1) * 100;
                continue;
            }
            // 37 is prime to 100, so an exchange's 100 slots take its 100 line prefixes
            // (blocks) once each, in an order that is not sequential.
            let block = (self.line_offset + (self.cursor % 100) * 37) % 100;
            let last_two = (u32::from(self.cursor) * 61 + self.prefix) % 100;
            self.cursor += 1;
            self.taken += 1;
            return Some(self.national(digit, block * 100 + last_two as u16));
        }
        None
    }
}

/// Distinct valid US numbers for the starts of one run, in the order they are used.
pub(crate) struct Destinations {
    /// National numbers (after `+1`).
    numbers: Vec<u64>,
    ranges: usize,
    max_per_range: usize,
}

impl Destinations {
    pub(crate) fn generate(n: usize) -> anyhow::Result<Self> {
        let mut rng = Rng(SEED);
        // Every area code and every exchange from 200 to 999 (the plan's own rules), area
        // codes ending in 11 left out; libphonenumber drops the rest.
        let mut ranges: Vec<Range> = (200..1000u32)
            .filter(|area| area % 100 != 11)
            .flat_map(|area| (20..100u32).map(move |two| area * 100 + two))
            .map(|prefix| Range::new(prefix, &mut rng))
            .collect();
        for i in (1..ranges.len()).rev() {
            ranges.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut numbers = Vec::with_capacity(n);
        let (mut used, mut max_per_range) = (0, 0);
        while numbers.len() < n {
            if ranges.is_empty() {
                anyhow::bail!(
                    "only {} valid US numbers could be drawn, {n} wanted",
                    numbers.len()
                );
            }
            ranges.retain_mut(|range| {
                if numbers.len() >= n {
                    return true;
                }
                let Some(number) = range.next_number() else {
                    return false;
                };
                numbers.push(number);
                if range.taken == 1 {
                    used += 1;
                }
                max_per_range = max_per_range.max(usize::from(range.taken));
                true
            });
        }
        Ok(Destinations {
            numbers,
            ranges: used,
            max_per_range,
        })
    }

    /// The `i`-th destination in E.164.
    pub(crate) fn number(&self, i: usize) -> Option<String> {
        self.numbers.get(i).map(|n| format!("+1{n}"))
    }

    pub(crate) fn len(&self) -> usize {
        self.numbers.len()
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "{} distinct valid US numbers over {} ranges (at most {} per range, 1 per block of 100), \
             a distinct client IP each",
            self.numbers.len(),
            self.ranges,
            self.max_per_range
        )
    }
}

/// The `i`-th of distinct public IPv4 addresses. 11.0.0.0 to 99.255.255.255 hold no
/// private, shared or reserved block, and multiplying by a prime larger than 89 permutes
/// their 89 × 2²⁴ addresses, so neighbouring starts come from unrelated networks.
pub(crate) fn client_ip(i: usize) -> String {
    const FIRST: u64 = 11 << 24;
    const COUNT: u64 = 89 << 24;
    let offset = (i as u64 % COUNT) * 2_654_435_761 % COUNT;
    Ipv4Addr::from((FIRST + offset) as u32).to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn numbers_are_distinct_valid_and_spread() {
        let n = 5_000;
        let d = Destinations::generate(n).expect("enough numbers");
        assert_eq!(d.len(), n);
        let numbers: BTreeSet<String> = (0..n).filter_map(|i| d.number(i)).collect();
        assert_eq!(numbers.len(), n, "numbers repeat");
        let ranges: BTreeSet<&str> = numbers.iter().map(|number| &number[..7]).collect();
        assert_eq!((ranges.len(), d.ranges, d.max_per_range), (n, n, 1));
        // The probes stand for whole exchanges: check a sample of numbers one by one.
        for i in (0..n).step_by(47) {
            assert!(
                us_fixed_or_mobile(d.numbers[i]),
                "+1{} is not valid",
                d.numbers[i]
            );
        }
    }

    #[test]
    fn a_range_gives_one_number_per_block_and_skips_fictional_exchanges() {
        // +1 415 55x xxxx: exchange 555 is for fiction.
        let mut range = Range::new(41_555, &mut Rng(SEED));
        let numbers: Vec<u64> = std::iter::from_fn(|| range.next_number()).collect();
        assert_eq!(numbers.len(), 900);
        let blocks: BTreeSet<u64> = numbers.iter().map(|n| n / 100).collect();
        assert_eq!(blocks.len(), numbers.len(), "two numbers in one block");
        for n in &numbers {
            assert_eq!(n / 100_000, 41_555, "{n} is outside its range");
            assert_ne!(n / 10_000 % 1000, 555, "{n}");
        }
        for n in numbers.iter().step_by(97) {
            assert!(us_fixed_or_mobile(*n), "+1{n} is not valid");
        }
        // An area code libphonenumber does not know gives nothing, for one probe.
        let mut unknown = Range::new(99_920, &mut Rng(SEED));
        assert_eq!(unknown.next_number(), None);
        assert_eq!(unknown.probed.count_ones(), 1);
    }

    #[test]
    fn client_ips_are_distinct_and_public() {
        let ips: BTreeSet<Ipv4Addr> = (0..100_000)
            .map(|i| client_ip(i).parse().expect("an IPv4 address"))
            .collect();
        assert_eq!(ips.len(), 100_000);
        for ip in ips {
            let first = ip.octets()[0];
            assert!((11..100).contains(&first), "{ip}");
        }
    }
}
