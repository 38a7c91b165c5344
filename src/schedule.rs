//! The cron schedule: parse a 6-field (seconds first, Geode/Spring style) or 5-field
//! expression, and compute fire times in the configured IANA time zone.
//!
//! Owns: parsing and the arithmetic of slots. Does not own: clocks (the caller passes
//! `now`) or what happens at a slot.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedule.cron: invalid expression {expr:?}: {reason}")]
    Cron { expr: String, reason: String },
    #[error("schedule.timezone: unknown IANA time zone {0:?}")]
    Timezone(String),
}

#[derive(Clone, Debug)]
pub struct Schedule {
    expr: String,
    cron: cron::Schedule,
    tz: Tz,
}

impl Schedule {
    pub fn new(expr: &str, timezone: &str) -> Result<Schedule, ScheduleError> {
        let fields = expr.split_whitespace().count();
        let full = match fields {
            5 => format!("0 {expr}"),
            6 | 7 => expr.to_string(),
            n => {
                return Err(ScheduleError::Cron {
                    expr: expr.into(),
                    reason: format!("expected 5 or 6 fields (seconds first), got {n}"),
                });
            }
        };
        let cron = cron::Schedule::from_str(&full)
            .map_err(|e| ScheduleError::Cron { expr: expr.into(), reason: e.to_string() })?;
        let tz: Tz = timezone.parse().map_err(|_| ScheduleError::Timezone(timezone.into()))?;
        Ok(Schedule { expr: expr.to_string(), cron, tz })
    }

    pub fn expression(&self) -> &str {
        &self.expr
    }

    /// The first fire time strictly after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.after(&now.with_timezone(&self.tz)).next().map(|t| t.with_timezone(&Utc))
    }

    /// How long the sizer waits after a refresh that ended at `now`: `every`, or less, so
    /// that the next refresh starts `lead` ahead of a scheduled run and its sizes are
    /// fresh when the run reads them. Never less than `floor`: a run due sooner than
    /// `floor + lead` is left to the refresh that just ended, and frequent runs do not
    /// make refreshes frequent.
    pub fn refresh_wait(&self, now: DateTime<Utc>, every: Duration, lead: Duration, floor: Duration) -> Duration {
        let floor = floor.min(every);
        let (Ok(lead), Ok(floor_c), Ok(every_c)) =
            (chrono::Duration::from_std(lead), chrono::Duration::from_std(floor), chrono::Duration::from_std(every))
        else {
            return every;
        };
        let horizon = now + every_c + lead;
        self.cron
            .after(&now.with_timezone(&self.tz))
            .map(|t| t.with_timezone(&Utc))
            .take_while(|&t| t <= horizon)
            .map(|t| t - lead)
            .find(|&start| start >= now + floor_c)
            .and_then(|start| (start - now).to_std().ok())
            .unwrap_or(every)
    }

    /// The latest fire time at or before `now` (the slot `now` belongs to), looking back
    /// at most a day.
    pub fn slot_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = now - chrono::Duration::days(1);
        let mut last = None;
        for t in self.cron.after(&start.with_timezone(&self.tz)) {
            let t = t.with_timezone(&Utc);
            if t > now {
                break;
            }
            last = Some(t);
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_refresh_is_timed_to_start_its_lead_ahead_of_the_next_run() {
        let s = Schedule::new("0 0 3 * * *", "UTC").unwrap();
        let at = |h, m, sec| Utc.with_ymd_and_hms(2026, 1, 1, h, m, sec).unwrap();
        let (every, lead, floor) = (Duration::from_secs(900), Duration::from_secs(30), Duration::from_secs(225));
        // Far from the run: the interval.
        assert_eq!(s.refresh_wait(at(1, 0, 0), every, lead, floor), every);
        // The run within an interval: 30 s ahead of it.
        assert_eq!(s.refresh_wait(at(2, 50, 0), every, lead, floor), Duration::from_secs(570));
        // Within the lead: this refresh was the run's; the next is an interval away.
        assert_eq!(s.refresh_wait(at(2, 59, 40), every, lead, floor), every);
        // Too close to aim at within the floor: the interval.
        assert_eq!(s.refresh_wait(at(2, 58, 0), every, lead, floor), every);
        // Runs every 3 s: the first run at least the floor away, 10 s ahead of it.
        let often = Schedule::new("*/3 * * * * *", "UTC").unwrap();
        assert_eq!(often.refresh_wait(at(1, 0, 1), every, Duration::from_secs(10), floor), Duration::from_secs(226));
        // A floor above the interval gives the interval.
        assert_eq!(often.refresh_wait(at(1, 0, 1), Duration::from_secs(20), lead, floor), Duration::from_secs(20));
    }

    #[test]
    fn six_and_five_fields() {
        let s = Schedule::new("0 0 3 * * *", "UTC").unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 2, 0, 0).unwrap();
        assert_eq!(s.next_after(now).unwrap(), Utc.with_ymd_and_hms(2026, 1, 1, 3, 0, 0).unwrap());
        let s5 = Schedule::new("30 3 * * *", "UTC").unwrap();
        assert_eq!(s5.next_after(now).unwrap(), Utc.with_ymd_and_hms(2026, 1, 1, 3, 30, 0).unwrap());
    }

    #[test]
    fn time_zone_is_honoured() {
        let s = Schedule::new("0 0 3 * * *", "Europe/Berlin").unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        // 03:00 in Berlin in winter is 02:00 UTC.
        assert_eq!(s.next_after(now).unwrap(), Utc.with_ymd_and_hms(2026, 1, 1, 2, 0, 0).unwrap());
    }

    #[test]
    fn slot_is_the_latest_fire_time() {
        let s = Schedule::new("*/5 * * * * *", "UTC").unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 7).unwrap();
        assert_eq!(s.slot_at(now).unwrap(), Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 5).unwrap());
    }

    #[test]
    fn errors_name_the_key_and_expression() {
        let e = Schedule::new("61 * * * * *", "UTC").unwrap_err().to_string();
        assert!(e.contains("schedule.cron") && e.contains("61 * * * * *"), "{e}");
        let e = Schedule::new("* *", "UTC").unwrap_err().to_string();
        assert!(e.contains("5 or 6 fields"), "{e}");
        let e = Schedule::new("* * * * *", "Nowhere/City").unwrap_err().to_string();
        assert!(e.contains("schedule.timezone"), "{e}");
    }
}
