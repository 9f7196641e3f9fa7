//! Business hours resolved for evaluation: the event's user override, else
//! its tenant's, else the global hours, each in its own IANA time zone.

use std::collections::HashMap;

use chrono::{Datelike, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use crate::config::{BusinessHours, Day, HoursOverride};

#[derive(Debug, Clone)]
struct Hours {
    tz: Tz,
    days: u8,
    start: u16,
    end: u16,
    holidays: Vec<NaiveDate>,
}

#[derive(Debug, Clone, Default)]
struct Partial {
    tz: Option<Tz>,
    days: Option<u8>,
    start: Option<u16>,
    end: Option<u16>,
    holidays: Option<Vec<NaiveDate>>,
}

fn mask(days: &[Day]) -> u8 {
    days.iter().fold(0, |m, d| m | d.bit())
}

impl From<&HoursOverride> for Partial {
    fn from(o: &HoursOverride) -> Self {
        Partial {
            tz: o.timezone,
            days: o.days.as_deref().map(mask),
            start: o.start.map(|c| c.0),
            end: o.end.map(|c| c.0),
            holidays: o.holidays.clone(),
        }
    }
}

/// Compiled business hours.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    global: Hours,
    tenants: HashMap<String, Partial>,
    users: HashMap<String, Partial>,
}

impl Schedule {
    pub(crate) fn new(bh: &BusinessHours) -> Schedule {
        Schedule {
            global: Hours {
                tz: bh.timezone,
                days: mask(&bh.days),
                start: bh.start.0,
                end: bh.end.0,
                holidays: bh.holidays.clone(),
            },
            tenants: bh
                .tenants
                .iter()
                .map(|(k, v)| (k.clone(), v.into()))
                .collect(),
            users: bh
                .users
                .iter()
                .map(|(k, v)| (k.to_lowercase(), v.into()))
                .collect(),
        }
    }

    /// True when `time_ns` falls inside business hours for this tenant and user.
    pub(crate) fn is_business_time(&self, time_ns: i64, tenant: &str, user: Option<&str>) -> bool {
        let t = self.tenants.get(tenant);
        let u = user.and_then(|u| {
            if u.bytes().any(|b| b.is_ascii_uppercase()) {
                self.users.get(&u.to_lowercase())
            } else {
                self.users.get(u)
            }
        });
        let pick = |f: &dyn Fn(&Partial) -> Option<u16>, g: u16| {
            u.and_then(f).or_else(|| t.and_then(f)).unwrap_or(g)
        };
        let tz = u
            .and_then(|p| p.tz)
            .or_else(|| t.and_then(|p| p.tz))
            .unwrap_or(self.global.tz);
        let days = u
            .and_then(|p| p.days)
            .or_else(|| t.and_then(|p| p.days))
            .unwrap_or(self.global.days);
        let start = pick(&|p| p.start, self.global.start);
        let end = pick(&|p| p.end, self.global.end);
        let holidays = u
            .and_then(|p| p.holidays.as_deref())
            .or_else(|| t.and_then(|p| p.holidays.as_deref()))
            .unwrap_or(&self.global.holidays);

        let local = Utc.timestamp_nanos(time_ns).with_timezone(&tz);
        let today = local.date_naive();
        let working = |day: NaiveDate| {
            days & (1u8 << day.weekday().num_days_from_monday()) != 0 && !holidays.contains(&day)
        };
        let minute = (local.hour() * 60 + local.minute()) as u16;
        if start <= end {
            working(today) && minute >= start && minute < end
        } else {
            // A shift across midnight belongs to the day it started on: its
            // hours after midnight are that day's, holiday or not.
            (minute >= start && working(today))
                || (minute < end && today.pred_opt().is_some_and(working))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(text: &str) -> i64 {
        event::parse_rfc3339_ns(text).unwrap()
    }

    fn scenario_hours() -> Schedule {
        let bh: BusinessHours = serde_yaml::from_str(
            "timezone: America/New_York\ndays: [mon, tue, wed, thu, fri]\nstart: \"08:00\"\nend: \"19:00\"\nusers: {\"Ken@example.com\": {timezone: Asia/Tokyo}}\nholidays: [2026-12-25]\n",
        )
        .unwrap();
        Schedule::new(&bh)
    }

    #[test]
    fn new_york_night_is_off_hours_and_tokyo_user_is_local() {
        let s = scenario_hours();
        assert!(!s.is_business_time(
            ns("2026-03-11T07:30:00Z"),
            "default",
            Some("dana@example.com")
        ));
        assert!(s.is_business_time(
            ns("2026-03-11T14:00:00Z"),
            "default",
            Some("dana@example.com")
        ));
        // 10:00 in Tokyo is 01:00 UTC.
        assert!(s.is_business_time(
            ns("2026-03-11T01:00:00Z"),
            "default",
            Some("ken@example.com")
        ));
        assert!(!s.is_business_time(
            ns("2026-03-11T01:00:00Z"),
            "default",
            Some("dana@example.com")
        ));
    }

    #[test]
    fn weekends_holidays_and_defaults() {
        let s = scenario_hours();
        // Saturday 2026-03-14 noon in New York.
        assert!(!s.is_business_time(ns("2026-03-14T16:00:00Z"), "default", None));
        assert!(!s.is_business_time(ns("2026-12-25T17:00:00Z"), "default", None));
        let d = Schedule::new(&BusinessHours::default());
        assert!(d.is_business_time(ns("2026-03-10T08:00:00Z"), "default", None));
        assert!(!d.is_business_time(ns("2026-03-10T18:00:00Z"), "default", None));
        assert!(!d.is_business_time(ns("2026-03-10T07:59:00Z"), "default", None));
    }

    #[test]
    fn a_night_shift_keeps_its_hours_after_midnight_on_the_day_it_started() {
        let bh: BusinessHours = serde_yaml::from_str(
            "timezone: Europe/London\ndays: [mon, tue, wed, thu, fri]\nstart: \"22:00\"\nend: \"06:00\"\nholidays: [2026-12-25]\n",
        )
        .unwrap();
        let s = Schedule::new(&bh);
        // Friday 25 Dec 02:00 is Thursday's shift (worked); Saturday 26 Dec
        // 02:00 is the holiday's shift (not worked), Friday 23:00 too.
        assert!(s.is_business_time(ns("2026-12-25T02:00:00Z"), "default", None));
        assert!(!s.is_business_time(ns("2026-12-26T02:00:00Z"), "default", None));
        assert!(!s.is_business_time(ns("2026-12-25T23:00:00Z"), "default", None));
        // Thursday 24 Dec 23:00 starts a worked shift.
        assert!(s.is_business_time(ns("2026-12-24T23:00:00Z"), "default", None));
    }

    #[test]
    fn tenant_override_applies_and_user_wins_over_tenant() {
        let bh: BusinessHours = serde_yaml::from_str(
            "tenants: {acme: {timezone: Europe/Paris, start: \"22:00\", end: \"06:00\"}}\nusers: {x@acme.io: {start: \"00:00\", end: \"24:00\"}}\n",
        )
        .unwrap();
        let s = Schedule::new(&bh);
        // 23:00 Paris on a Tuesday night shift.
        assert!(s.is_business_time(ns("2026-03-10T22:00:00Z"), "acme", None));
        assert!(!s.is_business_time(ns("2026-03-10T12:00:00Z"), "acme", None));
        assert!(s.is_business_time(ns("2026-03-10T12:00:00Z"), "acme", Some("x@acme.io")));
    }
}
