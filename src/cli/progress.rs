//! Progress on the terminal for the commands that wait on moves (`rebalance --once`,
//! `evacuate --wait`): on a terminal a bar (bytes moved of planned, slots, rate, time
//! left); off a terminal, one plain line every few seconds, so a log shows the run alive.
//!
//! Owns: drawing. Does not own: the figures (the run's `Progress`, the sidecar's status).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressStyle};

/// How often a plain line is printed off a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// Where a run stands: bytes and slots done of planned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    pub bytes_done: u64,
    pub bytes_planned: u64,
    pub slots_done: u64,
    pub slots_planned: u64,
}

pub struct Shown {
    bar: Option<ProgressBar>,
    started: Instant,
    /// When the last plain line was printed; the first comes at the first figures.
    last_line: Option<Instant>,
}

impl Shown {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn new() -> Shown {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            let style =
                ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {msg} {bytes_per_sec}, about {eta} left")
                    .expect("a valid template");
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Shown { bar, started: Instant::now(), last_line: None }
    }

    pub fn update(&mut self, f: Figures) {
        if f.slots_planned == 0 {
            return;
        }
        match &self.bar {
            Some(bar) => {
                bar.set_length(f.bytes_planned);
                bar.set_position(f.bytes_done.min(f.bytes_planned));
                bar.set_message(format!("{}/{} slots", f.slots_done, f.slots_planned));
            }
            None if self.last_line.is_none_or(|t| t.elapsed() >= LINE_EVERY) => {
                self.last_line = Some(Instant::now());
                eprintln!("{}", line(f, self.started.elapsed()));
            }
            None => {}
        }
    }

    /// Clears the bar; off a terminal, prints the final figures (if any were seen), so
    /// a log ends with what was done.
    pub fn finish(self, last: Option<Figures>) {
        match (self.bar, last) {
            (Some(bar), _) => bar.finish_and_clear(),
            (None, Some(f)) if f.slots_planned > 0 => eprintln!("{}", line(f, self.started.elapsed())),
            (None, _) => {}
        }
    }
}

/// One plain line: bytes and slots done of planned, the mean rate, the time left at it.
pub fn line(f: Figures, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = f.bytes_done as f64 / secs;
    let left = match rate > 0.0 {
        true => {
            let t = Duration::from_secs_f64(f.bytes_planned.saturating_sub(f.bytes_done) as f64 / rate);
            format!("about {} left", HumanDuration(t))
        }
        false => "time left unknown".into(),
    };
    format!(
        "moved {} of {}, {}/{} slots, {}/s, {left}",
        HumanBytes(f.bytes_done),
        HumanBytes(f.bytes_planned),
        f.slots_done,
        f.slots_planned,
        HumanBytes(rate as u64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_line_says_done_of_planned_rate_and_time_left() {
        let f = Figures { bytes_done: 10 << 20, bytes_planned: 40 << 20, slots_done: 100, slots_planned: 400 };
        let l = line(f, Duration::from_secs(10));
        assert_eq!(l, "moved 10.00 MiB of 40.00 MiB, 100/400 slots, 1.00 MiB/s, about 30 seconds left");
        let l = line(Figures { bytes_done: 0, ..f }, Duration::from_secs(1));
        assert!(l.ends_with("time left unknown"), "{l}");
    }
}
