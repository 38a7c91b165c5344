//! The cron schedule: parse a 6-field (seconds first, Geode/Spring style) or 5-field
//! expression, and compute fire times in the configured IANA time zone.
//!
//! Owns: parsing and the arithmetic of slots. Does not own: clocks (the caller passes
//! `now`) or what happens at a slot.

use std::str::FromStr;

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
