//! Configuration the binary embeds in `vigil.yaml`: named lists, business
//! hours and the engine's knobs. Every struct rejects unknown fields so a typo
//! fails at start-up with the file and line, not silently at 3 a.m.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::NaiveDate;
use chrono_tz::Tz;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Named lists referenced by rules (`in_list: approved_mcp_domains`), the
/// top-level `lists:` key of vigil.yaml. Entries may be globs (`*.slack.com`).
/// A list given here replaces the default pack's list of the same name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Lists(pub BTreeMap<String, Vec<String>>);

/// The top-level `business_hours:` key of vigil.yaml. Absent fields take the
/// defaults: Monday to Friday, 08:00 to 18:00, UTC, no holidays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessHours {
    /// IANA time zone of the organization, e.g. `America/New_York`.
    #[serde(default = "default_tz")]
    pub timezone: Tz,
    /// Working days, e.g. `[mon, tue, wed, thu, fri]`.
    #[serde(default = "default_days")]
    pub days: Vec<Day>,
    /// Start of the working day, local time, `"HH:MM"`.
    #[serde(default = "default_start")]
    pub start: ClockTime,
    /// End of the working day (exclusive), local time, `"HH:MM"`; may be
    /// earlier than `start` for a shift that crosses midnight.
    #[serde(default = "default_end")]
    pub end: ClockTime,
    /// Whole local days that are outside business hours, e.g. `[2026-12-25]`.
    #[serde(default)]
    pub holidays: Vec<NaiveDate>,
    /// Per-user overrides keyed by the event's `user` (case-insensitive);
    /// they win over the tenant's and the global settings.
    #[serde(default)]
    pub users: BTreeMap<String, HoursOverride>,
    /// Per-tenant overrides keyed by the event's `tenant`.
    #[serde(default)]
    pub tenants: BTreeMap<String, HoursOverride>,
}

impl Default for BusinessHours {
    fn default() -> Self {
        BusinessHours {
            timezone: default_tz(),
            days: default_days(),
            start: default_start(),
            end: default_end(),
            holidays: Vec::new(),
            users: BTreeMap::new(),
            tenants: BTreeMap::new(),
        }
    }
}

/// A user's or tenant's departure from the global business hours; every
/// field left out is inherited (user from tenant, tenant from global).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoursOverride {
    /// IANA time zone, e.g. `Asia/Tokyo`.
    #[serde(default)]
    pub timezone: Option<Tz>,
    /// Working days.
    #[serde(default)]
    pub days: Option<Vec<Day>>,
    /// Start of the working day, `"HH:MM"`.
    #[serde(default)]
    pub start: Option<ClockTime>,
    /// End of the working day, `"HH:MM"`.
    #[serde(default)]
    pub end: Option<ClockTime>,
    /// Holidays; replaces the inherited list.
    #[serde(default)]
    pub holidays: Option<Vec<NaiveDate>>,
}

fn default_tz() -> Tz {
    Tz::UTC
}
fn default_days() -> Vec<Day> {
    vec![Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri]
}
fn default_start() -> ClockTime {
    ClockTime(8 * 60)
}
fn default_end() -> ClockTime {
    ClockTime(18 * 60)
}

/// A day of the week as written in config: `mon` .. `sun`, full names
/// accepted, in any case (`Mon`, `MONDAY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl<'de> Deserialize<'de> for Day {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let day = match text.trim().to_ascii_lowercase().as_str() {
            "mon" | "monday" => Day::Mon,
            "tue" | "tues" | "tuesday" => Day::Tue,
            "wed" | "wednesday" => Day::Wed,
            "thu" | "thur" | "thurs" | "thursday" => Day::Thu,
            "fri" | "friday" => Day::Fri,
            "sat" | "saturday" => Day::Sat,
            "sun" | "sunday" => Day::Sun,
            _ => {
                return Err(de::Error::custom(format!(
                    "invalid day {text:?}, expected mon, tue, wed, thu, fri, sat or sun"
                )))
            }
        };
        Ok(day)
    }
}

impl Day {
    /// Bit for a weekday mask, Monday = bit 0.
    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// Minutes after local midnight, written `"HH:MM"` (`"24:00"` allowed as an end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClockTime(pub u16);

impl fmt::Display for ClockTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

impl Serialize for ClockTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ClockTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_clock(&text).ok_or_else(|| {
            de::Error::custom(format!(
                "invalid time {text:?}, expected \"HH:MM\" (or \"HH:MM:00\")"
            ))
        })
    }
}

fn parse_clock(text: &str) -> Option<ClockTime> {
    let (h, m) = text.trim().split_once(':')?;
    // `08:00:00` is the same minute; seconds other than 00 are not a clock vigil keeps.
    let m = match m.split_once(':') {
        Some((m, "00")) => m,
        Some(_) => return None,
        None => m,
    };
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(ClockTime(h * 60 + m))
}

/// The engine's knobs (`detection:` in vigil.yaml, at the lead's choice of key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// How far behind the newest event time an event may arrive and still be
    /// processed exactly as if it had come in order, e.g. `30s`.
    #[serde(default = "default_lateness", with = "duration_text")]
    pub allowed_lateness: Duration,
    /// Most keys (users, sessions, ...) one rule keeps state for; past it the
    /// least recently seen keys are evicted.
    #[serde(default = "default_max_keys")]
    pub max_keys_per_rule: usize,
    /// Most evidence events attached to one alert.
    #[serde(default = "default_max_evidence")]
    pub max_evidence: usize,
    /// Most events held for the watermark; past it the oldest are processed
    /// at once and the watermark moves up.
    #[serde(default = "default_max_buffered")]
    pub max_buffered_events: usize,
    /// Most memory (MiB) the events held for the watermark may take, as
    /// estimated from their contents (about 0.6 KB each); past it, as for
    /// `max_buffered_events`. The lateness honoured under load is this budget
    /// over (event rate x event size): 256 MiB keeps the default 30 s up to
    /// about 15,000 events/s.
    #[serde(default = "default_max_buffered_mib")]
    pub max_buffered_mib: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            allowed_lateness: default_lateness(),
            max_keys_per_rule: default_max_keys(),
            max_evidence: default_max_evidence(),
            max_buffered_events: default_max_buffered(),
            max_buffered_mib: default_max_buffered_mib(),
        }
    }
}

fn default_lateness() -> Duration {
    Duration::from_secs(30)
}
fn default_max_keys() -> usize {
    1_000_000
}
fn default_max_buffered() -> usize {
    1_000_000
}
fn default_max_buffered_mib() -> usize {
    256
}
fn default_max_evidence() -> usize {
    20
}

/// What rules are compiled against: the named lists and business hours from
/// vigil.yaml. The default pack's lists fill in names this does not set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RulesContext {
    /// User lists; each replaces the pack list of the same name.
    pub lists: Lists,
    /// Business hours for `schedule:` conditions.
    pub business_hours: BusinessHours,
}

/// Serde helper: a [`Duration`] written the humantime way (`30s`, `5m`, `2h`, `7d`).
pub mod duration_text {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        // Parsed inside the visitor, so that YAML errors point at the value
        // (`engine.idle_timeout` at its line and column), not at its section.
        struct Text;
        impl de::Visitor<'_> for Text {
            type Value = Duration;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as 30s, 5m, 2h or 1h30m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Text)
    }

    /// Parses `30s`, `5m`, `2h`, `7d`, `1h30m`.
    pub fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text.trim())
            .map_err(|e| format!("invalid duration {text:?}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_business_hours_block_deserializes_as_written() {
        let text = r#"
timezone: America/New_York
days: [mon, tue, wed, thu, fri]
start: "08:00"
end: "19:00"
users:
  "ken@example.com": {timezone: Asia/Tokyo}
holidays: [2026-12-25]
tenants:
  acme: {start: "09:00", days: [monday]}
"#;
        let bh: BusinessHours = serde_yaml::from_str(text).unwrap();
        assert_eq!(bh.timezone, chrono_tz::America::New_York);
        assert_eq!(bh.end, ClockTime(19 * 60));
        assert_eq!(
            bh.users["ken@example.com"].timezone,
            Some(chrono_tz::Asia::Tokyo)
        );
        assert_eq!(
            bh.holidays,
            vec![NaiveDate::from_ymd_opt(2026, 12, 25).unwrap()]
        );
        assert_eq!(bh.tenants["acme"].days, Some(vec![Day::Mon]));
    }

    #[test]
    fn business_hours_reject_unknown_fields_bad_zones_and_times() {
        let err =
            serde_yaml::from_str::<BusinessHours>("timezone: UTC\nstrat: \"08:00\"\n").unwrap_err();
        assert!(err.to_string().contains("strat"), "{err}");
        assert!(err.location().is_some());
        assert!(serde_yaml::from_str::<BusinessHours>("timezone: Mars/Olympus\n").is_err());
        assert!(serde_yaml::from_str::<BusinessHours>("start: \"25:00\"\n").is_err());
        assert!(serde_yaml::from_str::<BusinessHours>("days: [funday]\n").is_err());
    }

    #[test]
    fn days_in_any_case_and_times_with_zero_seconds_are_accepted() {
        let bh: BusinessHours = serde_yaml::from_str(
            "days: [Mon, TUESDAY, wed, Thurs, fri]\nstart: \"08:30:00\"\nend: \"7:45\"\n",
        )
        .unwrap();
        assert_eq!(
            bh.days,
            vec![Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri]
        );
        assert_eq!((bh.start, bh.end), (ClockTime(510), ClockTime(465)));
        let err = serde_yaml::from_str::<BusinessHours>("start: \"08:30:15\"\n").unwrap_err();
        assert!(err.to_string().contains("08:30:15"), "{err}");
        let err = serde_yaml::from_str::<BusinessHours>("days: [Mo]\n").unwrap_err();
        assert!(err.to_string().contains("invalid day \"Mo\""), "{err}");
    }

    #[test]
    fn defaults_are_weekdays_eight_to_six_utc() {
        let bh: BusinessHours = serde_yaml::from_str("{}").unwrap();
        assert_eq!(bh, BusinessHours::default());
        assert_eq!(bh.timezone, Tz::UTC);
        assert_eq!((bh.start, bh.end), (ClockTime(480), ClockTime(1080)));
    }

    #[test]
    fn lists_and_engine_config_deserialize() {
        let l: Lists =
            serde_yaml::from_str("approved_mcp_domains: [\"*.slack.com\"]\ninternal_domains: []\n")
                .unwrap();
        assert_eq!(l.0["approved_mcp_domains"], vec!["*.slack.com"]);
        let c: EngineConfig = serde_yaml::from_str("allowed_lateness: 2m\n").unwrap();
        assert_eq!(c.allowed_lateness, Duration::from_secs(120));
        assert_eq!(c.max_evidence, 20);
        assert!(serde_yaml::from_str::<EngineConfig>("lateness: 2m\n").is_err());
    }
}
