//! How events travel on the Kafka event topic between `vigil ingest` and
//! `vigil detect`: each message value is one Arrow IPC stream (schema, then
//! one record batch) of the archive's event schema ([`crate::schema`]).
//!
//! Arrow rather than protobuf: it is the schema the archive and replay
//! already use, so there is one definition of an event on disk and on the
//! wire, versioned the same way (`vigil.schema_version` in the schema
//! metadata, also sent as a message header); the batch is columnar with
//! dictionary-encoded strings, so the repeated users, sessions and tools of
//! a batch cost little, and any Arrow reader (pyarrow, DuckDB) can inspect
//! the topic. docs/scale-out.md shows the measured encode and decode speed.

use std::io::Cursor;

use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use crate::schema::{batch_to_events, event_schema, events_to_batch, SchemaError};
use crate::{Event, EVENT_SCHEMA_VERSION};

/// Media type of a message value, sent in the `content-type` header.
pub const CONTENT_TYPE: &str = "application/vnd.apache.arrow.stream";

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("not an Arrow IPC stream of vigil events: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("event schema version {found}, this vigil reads up to {EVENT_SCHEMA_VERSION}")]
    Version { found: u32 },
}

/// One message value for `events`.
pub fn encode_events(events: &[Event]) -> Result<Vec<u8>, WireError> {
    let batch = events_to_batch(events)?;
    let mut out = Vec::with_capacity(256 * events.len() + 1024);
    let mut w = StreamWriter::try_new(&mut out, &event_schema())?;
    w.write(&batch)?;
    w.finish()?;
    drop(w);
    Ok(out)
}

/// The events of one message value.
pub fn decode_events(bytes: &[u8]) -> Result<Vec<Event>, WireError> {
    let reader = StreamReader::try_new(Cursor::new(bytes), None)?;
    let found = reader
        .schema()
        .metadata()
        .get(crate::schema::SCHEMA_VERSION_KEY)
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(EVENT_SCHEMA_VERSION);
    if found > EVENT_SCHEMA_VERSION {
        return Err(WireError::Version { found });
    }
    let mut out = Vec::new();
    for batch in reader {
        out.extend(batch_to_events(&batch?)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventKind, Source};

    #[test]
    fn events_survive_the_wire_field_for_field() {
        let mut a = Event {
            time: 1_773_154_800_123_456_789,
            observed_time: 1_773_154_801_000_000_000,
            tenant: "acme".into(),
            source: Source::Agent,
            kind: EventKind::FileRead,
            user: Some("ann@acme.example".into()),
            session: Some("s-1".into()),
            path: Some("/home/ann/.ssh/id_ed25519".into()),
            tokens_in: Some(42),
            interactive: true,
            ..Default::default()
        };
        a.attrs.insert("tool_parameters.x", "y");
        a.event_id = a.compute_id();
        let b = Event {
            time: 5,
            tenant: "acme".into(),
            ..Default::default()
        };
        let bytes = encode_events(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(decode_events(&bytes).unwrap(), vec![a, b]);
        assert!(decode_events(b"\xff\xff\xff\xffnot arrow").is_err());
        assert!(decode_events(&bytes[..bytes.len() / 2]).is_err());
    }
}
