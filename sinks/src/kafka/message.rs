//! How an alert becomes a Kafka message: key, headers and value.
//!
//! - key: `tenant`, then `/field=value` for each of the rule's group-by fields
//!   in field-name order, e.g. `acme/user=dana@example.com`; just `tenant`
//!   when the rule has no key. The same subject always lands in the same
//!   partition, so its alerts stay in order.
//! - headers: `alert_id`, `rule_id`, `severity`, `tenant`, `schema_version`.
//! - value: the alert JSON of docs/alert-schema.md, byte for byte what the
//!   spool holds.

use event::Alert;
use rdkafka::message::{Header, OwnedHeaders};

/// The message key of an alert (see the module docs for the format).
pub fn message_key(alert: &Alert) -> String {
    let mut key = String::with_capacity(alert.tenant.len() + 32);
    key.push_str(&alert.tenant);
    for (field, value) in &alert.key {
        key.push('/');
        key.push_str(field);
        key.push('=');
        key.push_str(value);
    }
    key
}

/// The headers of an alert's message.
pub fn message_headers(alert: &Alert) -> OwnedHeaders {
    let schema_version = alert.schema_version.to_string();
    OwnedHeaders::new_with_capacity(5)
        .insert(Header {
            key: "alert_id",
            value: Some(alert.id.as_str()),
        })
        .insert(Header {
            key: "rule_id",
            value: Some(alert.rule_id.as_str()),
        })
        .insert(Header {
            key: "severity",
            value: Some(alert.severity.as_str()),
        })
        .insert(Header {
            key: "tenant",
            value: Some(alert.tenant.as_str()),
        })
        .insert(Header {
            key: "schema_version",
            value: Some(schema_version.as_str()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn key_is_tenant_then_group_by_fields_in_name_order() {
        let mut alert = Alert {
            tenant: "acme".into(),
            key: BTreeMap::from([
                ("user".to_string(), "dana@example.com".to_string()),
                ("session".to_string(), "s-1".to_string()),
            ]),
            ..Default::default()
        };
        assert_eq!(
            message_key(&alert),
            "acme/session=s-1/user=dana@example.com"
        );
        alert.key.clear();
        assert_eq!(message_key(&alert), "acme");
    }
}
