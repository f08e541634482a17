//! Exponential backoff with jitter for reconnects, so replicas that lost the broker together
//! do not all knock on it in the same millisecond.

use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            min,
            max: max.max(min),
            current: min,
        }
    }

    /// The next wait: between half and all of the current step, which then doubles up to
    /// `max`.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = step / 2;
        let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX).max(1);
        // A v4 UUID is 122 random bits from the OS; enough randomness for jitter without
        // another dependency.
        let random = (uuid::Uuid::new_v4().as_u128() as u64) % spread;
        half + Duration::from_micros(random)
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let steps: Vec<Duration> = (0..5).map(|_| backoff.next_delay()).collect();
        let caps = [100, 200, 400, 400, 400];
        for (delay, cap) in steps.iter().zip(caps) {
            assert!(*delay <= Duration::from_millis(cap), "{delay:?} > {cap} ms");
            assert!(
                *delay >= Duration::from_millis(cap / 2),
                "{delay:?} < {cap}/2 ms"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
