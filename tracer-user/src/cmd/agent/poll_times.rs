//! How long the agent waits between polls: the configured interval, stretched while polls are
//! long so that polling never takes more than a tenth of a core.
use std::{collections::VecDeque, time::Duration};

/// Polls may take at most this share of the agent's time: with many flows, a poll of the
/// kernel tables costs a lot of CPU, so the interval stretches rather than the node's CPU.
const POLL_DUTY_PERCENT: u32 = 10;

/// The durations of the last few polls: the interval follows their median, so that a single
/// slow poll (a first drop site looked up in kallsyms, a burst of link events) does not stall
/// the next ones, while a table that stays large (three slow polls of five) keeps it stretched.
pub struct PollTimes(VecDeque<Duration>);

impl Default for PollTimes {
    /// Starts as if the last polls had been instant: three slow polls in a row stretch it.
    fn default() -> PollTimes {
        PollTimes(std::iter::repeat_n(Duration::ZERO, Self::KEPT).collect())
    }
}

impl PollTimes {
    const KEPT: usize = 5;

    /// Records a poll's duration; returns the wait until the next poll.
    pub fn next_interval(&mut self, configured: Duration, took: Duration) -> Duration {
        self.0.pop_front();
        self.0.push_back(took);
        let mut sorted: Vec<Duration> = self.0.iter().copied().collect();
        sorted.sort();
        let typical = sorted[Self::KEPT / 2];
        configured.max(typical * (100 / POLL_DUTY_PERCENT - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_polls_stretch_the_interval_to_a_tenth_of_the_time_but_one_slow_poll_does_not() {
        let ms = Duration::from_millis;
        let mut t = PollTimes::default();
        assert_eq!(t.next_interval(ms(500), ms(900)), ms(500), "one slow poll");
        assert_eq!(t.next_interval(ms(500), ms(10)), ms(500));
        assert_eq!(t.next_interval(ms(500), ms(300)), ms(500), "two slow polls in five");
        assert_eq!(t.next_interval(ms(500), ms(300)), ms(2700), "three in five");
        for _ in 0..4 {
            t.next_interval(ms(500), ms(1));
        }
        assert_eq!(t.next_interval(ms(500), ms(1)), ms(500), "only the last five count");
    }
}
