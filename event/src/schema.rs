//! Arrow schemas of the [`Event`] and [`Alert`] records, and conversions
//! between slices of records and Arrow [`RecordBatch`]es.
//!
//! The archive writer (`sinks::archive`) turns batches of records into
//! RecordBatches with [`events_to_batch`] / [`alerts_to_batch`] and writes them
//! as Parquet; replay reads Parquet back and turns RecordBatches into records
//! with [`batch_to_events`] / [`batch_to_alerts`]. The readers look columns up
//! by name, accept any string-like or timestamp-like Arrow type, and fill
//! missing optional columns with defaults, so archives written by older
//! versions (fewer columns, other column order) still replay.
//!
//! Low-cardinality strings are `Dictionary<Int32, Utf8>` in memory: building
//! them interns repeated values, and Parquet stores them dictionary-encoded.
//! The archive writer does not store the Arrow schema in the file, so every
//! reader (DuckDB, pyarrow, Spark, Trino) sees those columns as plain strings.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, DictionaryArray, Int32Array, Int32Builder,
    Int64Array, Int64Builder, ListArray, MapArray, RecordBatch, StringArray, StringBuilder,
    StructArray, TimestampNanosecondBuilder,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Fields, Int32Type, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use rustc_hash::FxHashMap as HashMap;

use crate::{
    Alert, Attrs, Event, EventKind, Evidence, Outcome, Severity, Source, Text,
    ALERT_SCHEMA_VERSION, EVENT_SCHEMA_VERSION,
};

/// Metadata key holding the record's schema version ([`EVENT_SCHEMA_VERSION`] or [`ALERT_SCHEMA_VERSION`]).
pub const SCHEMA_VERSION_KEY: &str = "vigil.schema_version";
/// Metadata key naming the record type: `events` or `alerts`.
pub const RECORD_KEY: &str = "vigil.record";

/// Errors converting between records and Arrow batches.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    #[error("column {column:?} has type {found}, which cannot be read as {expected}")]
    ColumnType {
        column: String,
        found: DataType,
        expected: &'static str,
    },
    #[error("column {column:?} is required but missing")]
    MissingColumn { column: &'static str },
}

type Result<T> = std::result::Result<T, SchemaError>;

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

fn dict_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// The entries field of `map<string,string>`, named as the Parquet spec names them.
fn map_entries_field() -> Arc<Field> {
    Arc::new(Field::new(
        "key_value",
        DataType::Struct(Fields::from(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, true),
        ])),
        false,
    ))
}

fn map_type() -> DataType {
    DataType::Map(map_entries_field(), false)
}

fn list_item_field() -> Arc<Field> {
    Arc::new(Field::new("element", DataType::Utf8, true))
}

fn evidence_fields() -> Fields {
    Fields::from(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("time", ts_type(), false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("action", DataType::Utf8, true),
        Field::new("tool", DataType::Utf8, true),
        Field::new("path", DataType::Utf8, true),
        Field::new("domain", DataType::Utf8, true),
        Field::new("command", DataType::Utf8, true),
    ])
}

fn evidence_item_field() -> Arc<Field> {
    Arc::new(Field::new(
        "element",
        DataType::Struct(evidence_fields()),
        true,
    ))
}

fn metadata(record: &str, version: u32) -> std::collections::HashMap<String, String> {
    [
        (SCHEMA_VERSION_KEY.to_string(), version.to_string()),
        (RECORD_KEY.to_string(), record.to_string()),
    ]
    .into()
}

static EVENT_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let s = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    let d = |name: &str, nullable| Field::new(name, dict_type(), nullable);
    let fields = vec![
        Field::new("time", ts_type(), false),
        Field::new("observed_time", ts_type(), false),
        s("event_id", false),
        d("tenant", false),
        d("source", false),
        d("product", true),
        d("kind", false),
        d("action", true),
        d("outcome", false),
        d("user", true),
        d("session", true),
        d("host", true),
        d("tool", true),
        d("mcp_server", true),
        d("connector", true),
        s("target", true),
        d("domain", true),
        s("path", true),
        s("command", true),
        d("model", true),
        Field::new("tokens_in", DataType::Int64, true),
        Field::new("tokens_out", DataType::Int64, true),
        Field::new("interactive", DataType::Boolean, false),
        Field::new("attrs", map_type(), false),
    ];
    debug_assert_eq!(fields.len(), crate::EVENT_FIELDS.len());
    Arc::new(Schema::new_with_metadata(
        fields,
        metadata("events", EVENT_SCHEMA_VERSION),
    ))
});

static ALERT_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let s = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    let d = |name: &str, nullable| Field::new(name, dict_type(), nullable);
    let fields = vec![
        Field::new("time", ts_type(), false),
        Field::new("first_seen", ts_type(), false),
        Field::new("last_seen", ts_type(), false),
        s("id", false),
        Field::new("schema_version", DataType::Int32, false),
        d("rule_id", false),
        d("title", false),
        d("severity", false),
        Field::new("tags", DataType::List(list_item_field()), false),
        d("tenant", false),
        Field::new("key", map_type(), false),
        d("user", true),
        d("session", true),
        d("host", true),
        Field::new("count", DataType::Int64, false),
        Field::new("suppressed", DataType::Int64, false),
        Field::new("event_ids", DataType::List(list_item_field()), false),
        Field::new("evidence", DataType::List(evidence_item_field()), false),
        s("summary", false),
        Field::new("replayed", DataType::Boolean, false),
    ];
    Arc::new(Schema::new_with_metadata(
        fields,
        metadata("alerts", ALERT_SCHEMA_VERSION),
    ))
});

/// The Arrow schema of archived events (built once).
pub fn event_schema() -> SchemaRef {
    EVENT_SCHEMA.clone()
}

/// The Arrow schema of archived alerts (built once).
pub fn alert_schema() -> SchemaRef {
    ALERT_SCHEMA.clone()
}

// ---------------------------------------------------------------- writing

/// Builds a `map<string,string>` column from each row's entries.
fn map_column<'a, R, E>(rows: R, len: usize) -> Result<ArrayRef>
where
    R: Iterator<Item = E> + Clone,
    E: IntoIterator<Item = (&'a str, &'a str)>,
{
    // Sized exactly first: growing the builders copied their bytes over and
    // over, a visible share of the archive thread's time.
    let (mut entries, mut key_bytes, mut value_bytes) = (0, 0, 0);
    for row in rows.clone() {
        for (k, v) in row {
            entries += 1;
            key_bytes += k.len();
            value_bytes += v.len();
        }
    }
    let mut offsets = Vec::with_capacity(len + 1);
    offsets.push(0i32);
    let mut keys = StringBuilder::with_capacity(entries, key_bytes);
    let mut values = StringBuilder::with_capacity(entries, value_bytes);
    let mut n = 0i32;
    for row in rows {
        for (k, v) in row {
            keys.append_value(k);
            values.append_value(v);
            n = n.checked_add(1).ok_or_else(overflow)?;
        }
        offsets.push(n);
    }
    let DataType::Struct(fields) = map_entries_field().data_type().clone() else {
        unreachable!("map entries are a struct by construction")
    };
    let entries = StructArray::try_new(
        fields,
        vec![Arc::new(keys.finish()), Arc::new(values.finish())],
        None,
    )?;
    Ok(Arc::new(MapArray::try_new(
        map_entries_field(),
        OffsetBuffer::new(offsets.into()),
        entries,
        None,
        false,
    )?))
}

fn overflow() -> SchemaError {
    SchemaError::Arrow(ArrowError::ComputeError(
        "batch too large for 32-bit offsets".into(),
    ))
}

fn offsets_of(lens: impl Iterator<Item = usize>) -> Result<OffsetBuffer<i32>> {
    let mut offsets = vec![0i32];
    let mut n = 0i32;
    for l in lens {
        n = n
            .checked_add(i32::try_from(l).map_err(|_| overflow())?)
            .ok_or_else(overflow)?;
        offsets.push(n);
    }
    Ok(OffsetBuffer::new(offsets.into()))
}

fn string_list_column<'a>(rows: impl Iterator<Item = &'a Vec<String>> + Clone) -> Result<ArrayRef> {
    let offsets = offsets_of(rows.clone().map(|v| v.len()))?;
    let values: StringArray = rows
        .flat_map(|v| v.iter().map(|s| Some(s.as_str())))
        .collect();
    Ok(Arc::new(ListArray::try_new(
        list_item_field(),
        offsets,
        Arc::new(values),
        None,
    )?))
}

/// A dictionary-encoded string column over values that outlive it: the
/// index borrows them instead of copying each one to hash it, and a value
/// equal to the previous one (records of one request share their user,
/// session, host, ...) is not looked up at all.
struct DictCol<'a> {
    keys: Int32Builder,
    values: StringBuilder,
    index: HashMap<&'a str, i32>,
    last: Option<(&'a str, i32)>,
}

impl<'a> DictCol<'a> {
    fn new(len: usize) -> Self {
        DictCol {
            keys: Int32Builder::with_capacity(len),
            values: StringBuilder::with_capacity(64, 1024),
            index: HashMap::default(),
            last: None,
        }
    }

    #[inline]
    fn push(&mut self, v: Option<&'a str>) -> Result<()> {
        let Some(v) = v else {
            self.keys.append_null();
            return Ok(());
        };
        let key = match self.last {
            Some((l, k)) if l == v => k,
            _ => {
                let k = match self.index.get(v) {
                    Some(&k) => k,
                    None => {
                        let k = i32::try_from(self.index.len()).map_err(|_| overflow())?;
                        self.values.append_value(v);
                        self.index.insert(v, k);
                        k
                    }
                };
                self.last = Some((v, k));
                k
            }
        };
        self.keys.append_value(key);
        Ok(())
    }

    fn finish(mut self) -> Result<ArrayRef> {
        Ok(Arc::new(DictionaryArray::<Int32Type>::try_new(
            self.keys.finish(),
            Arc::new(self.values.finish()),
        )?))
    }
}

/// Converts events into one RecordBatch of [`event_schema`].
pub fn events_to_batch(events: &[Event]) -> Result<RecordBatch> {
    events_iter_to_batch(events.iter(), events.len())
}

/// Converts events given by reference (e.g. one partition's share of a
/// batch) into one RecordBatch of [`event_schema`].
pub fn event_refs_to_batch(events: &[&Event]) -> Result<RecordBatch> {
    events_iter_to_batch(events.iter().copied(), events.len())
}

fn events_iter_to_batch<'a, I>(events: I, n: usize) -> Result<RecordBatch>
where
    I: Iterator<Item = &'a Event> + Clone,
{
    let mut time = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut observed = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut event_id = StringBuilder::with_capacity(n, n * 32);
    let [mut tenant, mut source, mut product, mut kind, mut action, mut outcome, mut user, mut session, mut host, mut tool, mut mcp_server, mut connector, mut domain, mut model] =
        std::array::from_fn(|_| DictCol::new(n));
    // Sized exactly: growing a builder copies everything it holds.
    let (mut target_bytes, mut path_bytes, mut command_bytes) = (0, 0, 0);
    for e in events.clone() {
        target_bytes += e.target.as_ref().map_or(0, |s| s.len());
        path_bytes += e.path.as_ref().map_or(0, |s| s.len());
        command_bytes += e.command.as_ref().map_or(0, |s| s.len());
    }
    let mut target = StringBuilder::with_capacity(n, target_bytes);
    let mut path = StringBuilder::with_capacity(n, path_bytes);
    let mut command = StringBuilder::with_capacity(n, command_bytes);
    let mut tokens_in = Int64Builder::with_capacity(n);
    let mut tokens_out = Int64Builder::with_capacity(n);
    let mut interactive = BooleanBuilder::with_capacity(n);
    for e in events.clone() {
        time.append_value(e.time);
        observed.append_value(e.observed_time);
        event_id.append_value(&e.event_id);
        tenant.push(Some(&e.tenant))?;
        source.push(Some(e.source.as_str()))?;
        product.push(e.product.as_deref())?;
        kind.push(Some(e.kind.as_str()))?;
        action.push(e.action.as_deref())?;
        outcome.push(Some(e.outcome.as_str()))?;
        user.push(e.user.as_deref())?;
        session.push(e.session.as_deref())?;
        host.push(e.host.as_deref())?;
        tool.push(e.tool.as_deref())?;
        mcp_server.push(e.mcp_server.as_deref())?;
        connector.push(e.connector.as_deref())?;
        target.append_option(e.target.as_deref());
        domain.push(e.domain.as_deref())?;
        path.append_option(e.path.as_deref());
        command.append_option(e.command.as_deref());
        model.push(e.model.as_deref())?;
        tokens_in.append_option(e.tokens_in);
        tokens_out.append_option(e.tokens_out);
        interactive.append_value(e.interactive);
    }
    let attrs = map_column(events.map(|e| &e.attrs), n)?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(time.finish()),
        Arc::new(observed.finish()),
        Arc::new(event_id.finish()),
        tenant.finish()?,
        source.finish()?,
        product.finish()?,
        kind.finish()?,
        action.finish()?,
        outcome.finish()?,
        user.finish()?,
        session.finish()?,
        host.finish()?,
        tool.finish()?,
        mcp_server.finish()?,
        connector.finish()?,
        Arc::new(target.finish()),
        domain.finish()?,
        Arc::new(path.finish()),
        Arc::new(command.finish()),
        model.finish()?,
        Arc::new(tokens_in.finish()),
        Arc::new(tokens_out.finish()),
        Arc::new(interactive.finish()),
        attrs,
    ];
    Ok(RecordBatch::try_new(event_schema(), columns)?)
}

/// Converts alerts into one RecordBatch of [`alert_schema`].
pub fn alerts_to_batch(alerts: &[Alert]) -> Result<RecordBatch> {
    alert_refs_to_batch(&alerts.iter().collect::<Vec<_>>())
}

/// Converts alerts given by reference into one RecordBatch of [`alert_schema`].
pub fn alert_refs_to_batch(alerts: &[&Alert]) -> Result<RecordBatch> {
    let n = alerts.len();
    let ts = |f: fn(&Alert) -> i64| -> ArrayRef {
        let mut b = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
        alerts.iter().for_each(|a| b.append_value(f(a)));
        Arc::new(b.finish())
    };
    let dict = |f: fn(&Alert) -> Option<&str>| -> Result<ArrayRef> {
        let mut b = DictCol::new(n);
        for a in alerts {
            b.push(f(a))?;
        }
        b.finish()
    };
    let string = |f: fn(&Alert) -> &str| -> ArrayRef {
        Arc::new(alerts.iter().map(|a| Some(f(a))).collect::<StringArray>())
    };
    let int = |f: fn(&Alert) -> u64| -> ArrayRef {
        Arc::new(
            alerts
                .iter()
                .map(|a| Some(i64::try_from(f(a)).unwrap_or(i64::MAX)))
                .collect::<Int64Array>(),
        )
    };

    // Evidence: one struct row per piece of evidence, grouped per alert by list offsets.
    let ev: Vec<&Evidence> = alerts.iter().flat_map(|a| a.evidence.iter()).collect();
    let ev_str = |f: fn(&Evidence) -> Option<&str>| -> ArrayRef {
        Arc::new(ev.iter().map(|e| f(e)).collect::<StringArray>())
    };
    let mut ev_time = TimestampNanosecondBuilder::with_capacity(ev.len()).with_timezone("UTC");
    ev.iter().for_each(|e| ev_time.append_value(e.time));
    let evidence_struct = StructArray::try_new(
        evidence_fields(),
        vec![
            ev_str(|e| Some(&e.event_id)),
            Arc::new(ev_time.finish()),
            ev_str(|e| Some(e.kind.as_str())),
            ev_str(|e| e.action.as_deref()),
            ev_str(|e| e.tool.as_deref()),
            ev_str(|e| e.path.as_deref()),
            ev_str(|e| e.domain.as_deref()),
            ev_str(|e| e.command.as_deref()),
        ],
        None,
    )?;
    let evidence = ListArray::try_new(
        evidence_item_field(),
        offsets_of(alerts.iter().map(|a| a.evidence.len()))?,
        Arc::new(evidence_struct),
        None,
    )?;

    let columns: Vec<ArrayRef> = vec![
        ts(|a| a.time),
        ts(|a| a.first_seen),
        ts(|a| a.last_seen),
        string(|a| &a.id),
        Arc::new(
            alerts
                .iter()
                .map(|a| Some(i32::try_from(a.schema_version).unwrap_or(i32::MAX)))
                .collect::<Int32Array>(),
        ),
        dict(|a| Some(&a.rule_id))?,
        dict(|a| Some(&a.title))?,
        dict(|a| Some(a.severity.as_str()))?,
        string_list_column(alerts.iter().map(|a| &a.tags))?,
        dict(|a| Some(&a.tenant))?,
        map_column(
            alerts
                .iter()
                .map(|a| a.key.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            n,
        )?,
        dict(|a| a.user.as_deref())?,
        dict(|a| a.session.as_deref())?,
        dict(|a| a.host.as_deref())?,
        int(|a| a.count),
        int(|a| a.suppressed),
        string_list_column(alerts.iter().map(|a| &a.event_ids))?,
        Arc::new(evidence),
        string(|a| &a.summary),
        Arc::new(
            alerts
                .iter()
                .map(|a| Some(a.replayed))
                .collect::<BooleanArray>(),
        ),
    ];
    Ok(RecordBatch::try_new(alert_schema(), columns)?)
}

// ---------------------------------------------------------------- reading

/// A column looked up by name, read tolerantly.
struct Columns<'a> {
    fields: &'a Fields,
    arrays: &'a [ArrayRef],
}

impl<'a> Columns<'a> {
    fn of_batch(batch: &'a RecordBatch) -> Self {
        Columns {
            fields: batch.schema_ref().fields(),
            arrays: batch.columns(),
        }
    }

    fn of_struct(s: &'a StructArray) -> Self {
        Columns {
            fields: s.fields(),
            arrays: s.columns(),
        }
    }

    fn get(&self, name: &str) -> Option<&'a ArrayRef> {
        self.fields
            .iter()
            .position(|f| f.name() == name)
            .map(|i| &self.arrays[i])
    }

    fn cast_to(
        &self,
        name: &str,
        to: &DataType,
        expected: &'static str,
    ) -> Result<Option<ArrayRef>> {
        let Some(a) = self.get(name) else {
            return Ok(None);
        };
        if a.data_type() == to {
            return Ok(Some(a.clone()));
        }
        cast(a, to).map(Some).map_err(|_| SchemaError::ColumnType {
            column: name.to_string(),
            found: a.data_type().clone(),
            expected,
        })
    }

    /// Any string-like column (Utf8, LargeUtf8, Utf8View, dictionary of those) as Utf8.
    fn strings(&self, name: &str) -> Result<Option<StringArray>> {
        Ok(self.cast_to(name, &DataType::Utf8, "string")?.map(|a| {
            a.as_any()
                .downcast_ref::<StringArray>()
                .expect("cast to Utf8 gives a StringArray")
                .clone()
        }))
    }

    /// Any timestamp (any unit, any zone) or integer column as i64 nanoseconds.
    fn nanos(&self, name: &str) -> Result<Option<Int64Array>> {
        let Some(a) = self.get(name) else {
            return Ok(None);
        };
        let a = match a.data_type() {
            DataType::Timestamp(TimeUnit::Nanosecond, _) => a.clone(),
            DataType::Timestamp(_, _) => cast(a, &DataType::Timestamp(TimeUnit::Nanosecond, None))?,
            _ => a.clone(),
        };
        let found = a.data_type().clone();
        let ints = cast(&a, &DataType::Int64).map_err(|_| SchemaError::ColumnType {
            column: name.to_string(),
            found,
            expected: "timestamp",
        })?;
        Ok(Some(
            ints.as_any()
                .downcast_ref::<Int64Array>()
                .expect("cast to Int64")
                .clone(),
        ))
    }

    fn ints(&self, name: &str) -> Result<Option<Int64Array>> {
        Ok(self.cast_to(name, &DataType::Int64, "integer")?.map(|a| {
            a.as_any()
                .downcast_ref::<Int64Array>()
                .expect("cast to Int64")
                .clone()
        }))
    }

    fn bools(&self, name: &str) -> Result<Option<BooleanArray>> {
        Ok(self.cast_to(name, &DataType::Boolean, "boolean")?.map(|a| {
            a.as_any()
                .downcast_ref::<BooleanArray>()
                .expect("cast to Boolean")
                .clone()
        }))
    }

    fn maps(&self, name: &str) -> Result<Option<MapColumn>> {
        let Some(a) = self.get(name) else {
            return Ok(None);
        };
        let bad = || SchemaError::ColumnType {
            column: name.to_string(),
            found: a.data_type().clone(),
            expected: "map<string,string>",
        };
        let m = a.as_any().downcast_ref::<MapArray>().ok_or_else(bad)?;
        let keys = cast(m.keys(), &DataType::Utf8).map_err(|_| bad())?;
        let values = cast(m.values(), &DataType::Utf8).map_err(|_| bad())?;
        Ok(Some(MapColumn {
            offsets: m.offsets().clone(),
            nulls: m.nulls().cloned(),
            keys: keys
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("Utf8")
                .clone(),
            values: values
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("Utf8")
                .clone(),
        }))
    }

    fn lists(&self, name: &str) -> Result<Option<(ListArray, ArrayRef)>> {
        let Some(a) = self.get(name) else {
            return Ok(None);
        };
        let bad = || SchemaError::ColumnType {
            column: name.to_string(),
            found: a.data_type().clone(),
            expected: "list",
        };
        let l = match a.data_type() {
            DataType::List(_) => a
                .as_any()
                .downcast_ref::<ListArray>()
                .ok_or_else(bad)?
                .clone(),
            DataType::LargeList(item) => {
                let to = DataType::List(item.clone());
                let c = cast(a, &to).map_err(|_| bad())?;
                c.as_any()
                    .downcast_ref::<ListArray>()
                    .ok_or_else(bad)?
                    .clone()
            }
            _ => return Err(bad()),
        };
        let values = l.values().clone();
        Ok(Some((l, values)))
    }

    fn string_lists(&self, name: &str) -> Result<Option<StringLists>> {
        let Some((l, values)) = self.lists(name)? else {
            return Ok(None);
        };
        let values = cast(&values, &DataType::Utf8).map_err(|_| SchemaError::ColumnType {
            column: name.to_string(),
            found: values.data_type().clone(),
            expected: "list<string>",
        })?;
        Ok(Some(StringLists {
            list: l,
            values: values
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("Utf8")
                .clone(),
        }))
    }
}

struct MapColumn {
    offsets: OffsetBuffer<i32>,
    nulls: Option<NullBuffer>,
    keys: StringArray,
    values: StringArray,
}

impl MapColumn {
    /// Row `i`'s entries; with `keep`, only those keys.
    fn row<'a>(
        &'a self,
        i: usize,
        keep: Option<&'a HashSet<String>>,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let (start, end) = if self.nulls.as_ref().is_some_and(|n| n.is_null(i)) {
            (0, 0)
        } else {
            (self.offsets[i] as usize, self.offsets[i + 1] as usize)
        };
        (start..end)
            .filter(move |&j| {
                self.keys.is_valid(j) && keep.is_none_or(|k| k.contains(self.keys.value(j)))
            })
            .map(|j| {
                let value = if self.values.is_valid(j) {
                    self.values.value(j)
                } else {
                    ""
                };
                (self.keys.value(j), value)
            })
    }
}

impl MapColumn {
    /// Row `i` of a version 1 record: tool arguments kept under a product's
    /// name (`tool_input.to`) are given as `args.<member>`, as ingest names
    /// them now, and as such checked against `keep`.
    fn row_v1(&self, i: usize, keep: Option<&HashSet<String>>) -> Attrs {
        fn v1_argument(key: &str) -> Option<&str> {
            crate::V1_ARGUMENT_ROOTS.iter().find_map(|root| {
                key.strip_prefix(root)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .filter(|member| !member.is_empty())
            })
        }
        self.row(i, None)
            .map(|(k, v)| match v1_argument(k) {
                Some(member) => (Cow::Owned(format!("{}.{member}", crate::ARGS_PREFIX)), v),
                None => (Cow::Borrowed(k), v),
            })
            .filter(|(k, _)| keep.is_none_or(|set| set.contains(k.as_ref())))
            .collect()
    }
}

struct StringLists {
    list: ListArray,
    values: StringArray,
}

impl StringLists {
    fn row(&self, i: usize) -> Vec<String> {
        if self.list.is_null(i) {
            return Vec::new();
        }
        let offsets = self.list.value_offsets();
        (offsets[i] as usize..offsets[i + 1] as usize)
            .filter_map(|j| opt_str(&self.values, j))
            .collect()
    }
}

fn opt_str(a: &StringArray, i: usize) -> Option<String> {
    a.is_valid(i).then(|| a.value(i).to_string())
}

fn str_or_default(a: &Option<StringArray>, i: usize) -> String {
    a.as_ref().and_then(|a| opt_str(a, i)).unwrap_or_default()
}

fn opt_col_str(a: &Option<StringArray>, i: usize) -> Option<String> {
    a.as_ref().and_then(|a| opt_str(a, i))
}

fn opt_int(a: &Option<Int64Array>, i: usize) -> Option<i64> {
    a.as_ref().and_then(|a| a.is_valid(i).then(|| a.value(i)))
}

fn opt_bool(a: &Option<BooleanArray>, i: usize) -> bool {
    a.as_ref().is_some_and(|a| a.is_valid(i) && a.value(i))
}

/// Parses an enum column's text; a value this version does not know (an
/// archive written by a newer vigil) reads as the enum's default rather than
/// failing the whole replay.
fn enum_or_default<T: Default>(
    a: &Option<StringArray>,
    i: usize,
    parse: fn(&str) -> Option<T>,
) -> T {
    a.as_ref()
        .filter(|a| a.is_valid(i))
        .and_then(|a| parse(a.value(i)))
        .unwrap_or_default()
}

/// What a reader keeps of each archived event. Replay and warm-up read only
/// what the loaded rules use: the attributes they name, and full rows only
/// for the kinds they look at (the other rows count for time alone).
#[derive(Debug, Clone, Default)]
pub struct EventProjection {
    /// Columns to read (`time` and `kind` always are); the others read as
    /// unset. `None` reads every column.
    pub columns: Option<HashSet<String>>,
    /// Attribute keys to keep; `None` keeps every attribute.
    pub attrs: Option<HashSet<String>>,
    /// Kinds read as whole events; `None` reads every row as an event.
    pub kinds: Option<Vec<EventKind>>,
    /// String columns a filtering reader ([`batch_to_events_filtered`])
    /// reads only for the rows it keeps: what alerts carry but no filter looks at.
    pub deferred: HashSet<String>,
}

impl EventProjection {
    /// Everything: every row, every attribute.
    pub fn all() -> Self {
        Self::default()
    }

    /// Whether column `name` is read.
    pub fn reads(&self, name: &str) -> bool {
        matches!(name, "time" | "kind")
            || (name == "attrs" && self.attrs.as_ref().is_none_or(|a| !a.is_empty()))
            || (name != "attrs" && self.columns.as_ref().is_none_or(|c| c.contains(name)))
    }

    fn kind_mask(&self) -> [bool; EventKind::ALL.len()] {
        match &self.kinds {
            None => [true; EventKind::ALL.len()],
            Some(kinds) => {
                let mut mask = [false; EventKind::ALL.len()];
                for k in kinds {
                    mask[*k as usize] = true;
                }
                mask
            }
        }
    }
}

/// The rows of a batch read through an [`EventProjection`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProjectedEvents {
    /// Rows of the kinds asked for, in batch order.
    pub events: Vec<Event>,
    /// Event times of the other rows, in batch order.
    pub other_times: Vec<i64>,
}

/// A string column read without copying it: plain, or a dictionary whose
/// values are looked up per row (Parquet hands back dictionary-encoded
/// columns this way when asked, see `sinks::archive`).
enum StrCol {
    Plain(StringArray),
    Dict {
        keys: Int32Array,
        values: StringArray,
    },
}

impl StrCol {
    #[inline]
    fn get(&self, i: usize) -> Option<&str> {
        match self {
            StrCol::Plain(a) => a.is_valid(i).then(|| a.value(i)),
            StrCol::Dict { keys, values } => {
                if !keys.is_valid(i) {
                    return None;
                }
                let k = keys.value(i) as usize;
                (k < values.len() && values.is_valid(k)).then(|| values.value(k))
            }
        }
    }
}

fn opt_string(c: &Option<StrCol>, i: usize) -> Option<String> {
    c.as_ref().and_then(|c| c.get(i)).map(str::to_string)
}

fn opt_text(c: &Option<StrCol>, i: usize) -> Option<Text> {
    c.as_ref().and_then(|c| c.get(i)).map(Text::from)
}

fn parsed<T: Default>(c: &Option<StrCol>, i: usize, parse: fn(&str) -> Option<T>) -> T {
    c.as_ref()
        .and_then(|c| c.get(i))
        .and_then(parse)
        .unwrap_or_default()
}

impl<'a> Columns<'a> {
    /// A string-like column as a [`StrCol`]: dictionaries keep their values
    /// (keys widened to Int32), anything else is cast to Utf8.
    fn str_col(&self, name: &str) -> Result<Option<StrCol>> {
        let Some(a) = self.get(name) else {
            return Ok(None);
        };
        if let DataType::Dictionary(_, _) = a.data_type() {
            let bad = || SchemaError::ColumnType {
                column: name.to_string(),
                found: a.data_type().clone(),
                expected: "string",
            };
            let d = cast(a, &dict_type()).map_err(|_| bad())?;
            let d = d
                .as_any()
                .downcast_ref::<arrow::array::DictionaryArray<Int32Type>>()
                .ok_or_else(bad)?;
            let values = cast(d.values(), &DataType::Utf8).map_err(|_| bad())?;
            return Ok(Some(StrCol::Dict {
                keys: d.keys().clone(),
                values: values
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(bad)?
                    .clone(),
            }));
        }
        Ok(self.strings(name)?.map(StrCol::Plain))
    }
}

/// Reads events back from a RecordBatch of any version of [`event_schema`].
/// Only `time` is required; missing columns read as `None` / defaults.
pub fn batch_to_events(batch: &RecordBatch) -> Result<Vec<Event>> {
    Ok(batch_to_events_filtered(batch, &EventProjection::all(), |_| true)?.events)
}

/// A string column of a filtered read: needed `now` (to decide whether a
/// row is kept), or `later` (its deferred columns, read for kept rows only).
struct Phased {
    now: Option<StrCol>,
    later: Option<StrCol>,
}

impl Phased {
    fn now(&self, i: usize) -> Option<Text> {
        opt_text(&self.now, i)
    }

    fn fill(&self, slot: &mut Option<Text>, i: usize) {
        if self.later.is_some() {
            *slot = opt_text(&self.later, i);
        }
    }
}

/// [`batch_to_events`] keeping only what `projection` asks for: rows of
/// other kinds give just their time, attributes outside the projection are
/// never copied out of the batch, and rows that `keep` refuses are given as
/// times only. `keep` sees an event without the projection's deferred
/// columns, which are read afterwards for the rows it keeps: a reader that
/// drops most rows copies little of them.
pub fn batch_to_events_filtered(
    batch: &RecordBatch,
    projection: &EventProjection,
    keep: impl Fn(&Event) -> bool,
) -> Result<ProjectedEvents> {
    let c = Columns::of_batch(batch);
    let time = c
        .nanos("time")?
        .ok_or(SchemaError::MissingColumn { column: "time" })?;
    let kind = c.str_col("kind")?;
    let wanted = projection.kind_mask();
    let kinds: Vec<EventKind> = (0..batch.num_rows())
        .map(|i| parsed(&kind, i, EventKind::parse))
        .collect();
    let mut out = ProjectedEvents::default();
    let rows = kinds.iter().filter(|k| wanted[**k as usize]).count();
    if rows < kinds.len() {
        out.other_times = kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| !wanted[**k as usize])
            .map(|(i, _)| time.value(i))
            .collect();
    }
    if rows == 0 {
        return Ok(out);
    }
    let observed = if projection.reads("observed_time") {
        c.nanos("observed_time")?
    } else {
        None
    };
    let one = |name: &str| {
        if projection.reads(name) {
            c.str_col(name)
        } else {
            Ok(None)
        }
    };
    let s = |name: &str| -> Result<Phased> {
        let col = one(name)?;
        Ok(if projection.deferred.contains(name) {
            Phased {
                now: None,
                later: col,
            }
        } else {
            Phased {
                now: col,
                later: None,
            }
        })
    };
    let (source, outcome) = (one("source")?, one("outcome")?);
    let (event_id, tenant, product, action) =
        (s("event_id")?, s("tenant")?, s("product")?, s("action")?);
    let (user, session, host, tool, mcp_server, connector) = (
        s("user")?,
        s("session")?,
        s("host")?,
        s("tool")?,
        s("mcp_server")?,
        s("connector")?,
    );
    let (target, domain, path, command, model) = (
        s("target")?,
        s("domain")?,
        s("path")?,
        s("command")?,
        s("model")?,
    );
    let ints = |name| {
        if projection.reads(name) {
            c.ints(name)
        } else {
            Ok(None)
        }
    };
    let (tokens_in, tokens_out) = (ints("tokens_in")?, ints("tokens_out")?);
    let interactive = if projection.reads("interactive") {
        c.bools("interactive")?
    } else {
        None
    };
    let attrs = if projection.reads("attrs") {
        c.maps("attrs")?
    } else {
        None
    };
    // Records of version 1 kept tool arguments under each product's name.
    let v1_arguments = batch
        .schema()
        .metadata()
        .get(SCHEMA_VERSION_KEY)
        .and_then(|v| v.parse::<u32>().ok())
        .is_none_or(|v| v < 2);
    out.events.reserve_exact(rows);
    for (i, kind) in kinds.into_iter().enumerate() {
        if !wanted[kind as usize] {
            continue;
        }
        let mut e = Event {
            time: time.value(i),
            observed_time: opt_int(&observed, i).unwrap_or(0),
            event_id: opt_string(&event_id.now, i).unwrap_or_default(),
            tenant: tenant.now(i).unwrap_or_default(),
            source: parsed(&source, i, Source::parse),
            product: product.now(i),
            kind,
            action: action.now(i),
            outcome: parsed(&outcome, i, Outcome::parse),
            user: user.now(i),
            session: session.now(i),
            host: host.now(i),
            tool: tool.now(i),
            mcp_server: mcp_server.now(i),
            connector: connector.now(i),
            target: target.now(i),
            domain: domain.now(i),
            path: path.now(i),
            command: command.now(i),
            model: model.now(i),
            tokens_in: opt_int(&tokens_in, i),
            tokens_out: opt_int(&tokens_out, i),
            interactive: opt_bool(&interactive, i),
            attrs: attrs
                .as_ref()
                .map(|m| {
                    if v1_arguments {
                        m.row_v1(i, projection.attrs.as_ref())
                    } else {
                        m.row(i, projection.attrs.as_ref()).collect()
                    }
                })
                .unwrap_or_default(),
        };
        if !keep(&e) {
            out.other_times.push(e.time);
            continue;
        }
        if event_id.later.is_some() {
            e.event_id = opt_string(&event_id.later, i).unwrap_or_default();
        }
        if tenant.later.is_some() {
            e.tenant = opt_text(&tenant.later, i).unwrap_or_default();
        }
        for (col, slot) in [
            (&product, &mut e.product),
            (&action, &mut e.action),
            (&user, &mut e.user),
            (&session, &mut e.session),
            (&host, &mut e.host),
            (&tool, &mut e.tool),
            (&mcp_server, &mut e.mcp_server),
            (&connector, &mut e.connector),
            (&target, &mut e.target),
            (&domain, &mut e.domain),
            (&path, &mut e.path),
            (&command, &mut e.command),
            (&model, &mut e.model),
        ] {
            col.fill(slot, i);
        }
        out.events.push(e);
    }
    Ok(out)
}

/// Reads alerts back from a RecordBatch of any version of [`alert_schema`].
/// Only `time` is required; missing columns read as empty / defaults.
pub fn batch_to_alerts(batch: &RecordBatch) -> Result<Vec<Alert>> {
    let c = Columns::of_batch(batch);
    let time = c
        .nanos("time")?
        .ok_or(SchemaError::MissingColumn { column: "time" })?;
    let (first_seen, last_seen) = (c.nanos("first_seen")?, c.nanos("last_seen")?);
    let s = |name| c.strings(name);
    let (id, rule_id, title, severity, tenant) = (
        s("id")?,
        s("rule_id")?,
        s("title")?,
        s("severity")?,
        s("tenant")?,
    );
    let (user, session, host, summary) = (s("user")?, s("session")?, s("host")?, s("summary")?);
    let (version, count, suppressed) = (
        c.ints("schema_version")?,
        c.ints("count")?,
        c.ints("suppressed")?,
    );
    let (tags, event_ids) = (c.string_lists("tags")?, c.string_lists("event_ids")?);
    let key = c.maps("key")?;
    let replayed = c.bools("replayed")?;
    let evidence = match c.lists("evidence")? {
        None => None,
        Some((list, values)) => {
            let st = values
                .as_any()
                .downcast_ref::<StructArray>()
                .ok_or_else(|| SchemaError::ColumnType {
                    column: "evidence".into(),
                    found: values.data_type().clone(),
                    expected: "list<struct>",
                })?;
            Some((list, read_evidence(&Columns::of_struct(st), st.len())?))
        }
    };
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let t = time.value(i);
        let u = |a: &Option<Int64Array>| {
            opt_int(a, i)
                .map(|v| u64::try_from(v).unwrap_or(0))
                .unwrap_or(0)
        };
        out.push(Alert {
            schema_version: opt_int(&version, i)
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(ALERT_SCHEMA_VERSION),
            id: str_or_default(&id, i),
            rule_id: str_or_default(&rule_id, i),
            title: str_or_default(&title, i),
            severity: enum_or_default(&severity, i, Severity::parse),
            tags: tags.as_ref().map(|l| l.row(i)).unwrap_or_default(),
            tenant: str_or_default(&tenant, i),
            key: key
                .as_ref()
                .map(|m| {
                    m.row(i, None)
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            user: opt_col_str(&user, i),
            session: opt_col_str(&session, i),
            host: opt_col_str(&host, i),
            time: t,
            first_seen: opt_int(&first_seen, i).unwrap_or(t),
            last_seen: opt_int(&last_seen, i).unwrap_or(t),
            count: u(&count),
            suppressed: u(&suppressed),
            event_ids: event_ids.as_ref().map(|l| l.row(i)).unwrap_or_default(),
            evidence: match &evidence {
                Some((list, all)) if list.is_valid(i) => {
                    let o = list.value_offsets();
                    all[o[i] as usize..o[i + 1] as usize].to_vec()
                }
                _ => Vec::new(),
            },
            summary: str_or_default(&summary, i),
            replayed: opt_bool(&replayed, i),
        });
    }
    Ok(out)
}

fn read_evidence(c: &Columns<'_>, len: usize) -> Result<Vec<Evidence>> {
    let time = c.nanos("time")?;
    let s = |name| c.strings(name);
    let (event_id, kind, action, tool, path, domain, command) = (
        s("event_id")?,
        s("kind")?,
        s("action")?,
        s("tool")?,
        s("path")?,
        s("domain")?,
        s("command")?,
    );
    Ok((0..len)
        .map(|i| Evidence {
            event_id: str_or_default(&event_id, i),
            time: opt_int(&time, i).unwrap_or(0),
            kind: enum_or_default(&kind, i, EventKind::parse),
            action: opt_col_str(&action, i),
            tool: opt_col_str(&tool, i),
            path: opt_col_str(&path, i),
            domain: opt_col_str(&domain, i),
            command: opt_col_str(&command, i),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_columns_keep_every_value_in_order() {
        let input = [
            Some("a"),
            Some("a"),
            None,
            Some("b"),
            Some("a"),
            None,
            Some("c"),
            Some("b"),
        ];
        let mut col = DictCol::new(input.len());
        for v in input {
            col.push(v).unwrap();
        }
        let array = col.finish().unwrap();
        let back = cast(&array, &DataType::Utf8).unwrap();
        let back = back.as_any().downcast_ref::<StringArray>().unwrap();
        let got: Vec<Option<&str>> = back.iter().collect();
        assert_eq!(got, input);
        let dict = array
            .as_any()
            .downcast_ref::<DictionaryArray<Int32Type>>()
            .unwrap();
        assert_eq!(dict.values().len(), 3, "each distinct value once");
    }

    fn event(i: i64) -> Event {
        let mut e = Event {
            time: 1_773_154_800_000_000_000 + i,
            observed_time: 1_773_154_800_500_000_000 + i,
            tenant: "acme".into(),
            source: Source::Agent,
            product: Some("claude-code".into()),
            kind: if i % 2 == 0 {
                EventKind::FileRead
            } else {
                EventKind::ToolCall
            },
            action: (i % 3 == 0).then(|| "read".into()),
            outcome: Outcome::Success,
            user: Some(format!("user{}@example.com", i % 4).into()),
            session: Some("s-1".into()),
            tool: Some("Read".into()),
            path: Some(format!("/home/u/file{i}.rs").into()),
            tokens_in: (i % 2 == 1).then_some(i * 10),
            interactive: i % 5 == 0,
            attrs: [
                ("event.name".to_string(), "tool_result".to_string()),
                ("n".to_string(), i.to_string()),
            ]
            .into(),
            ..Default::default()
        };
        e.event_id = e.compute_id();
        e
    }

    fn alert() -> Alert {
        Alert {
            schema_version: ALERT_SCHEMA_VERSION,
            id: "a1".into(),
            rule_id: "ssh_key_read".into(),
            title: "SSH key read by agent".into(),
            severity: Severity::High,
            tags: vec!["attack.t1552.004".into(), "owasp.llm06".into()],
            tenant: "acme".into(),
            key: [("user".to_string(), "gina@example.com".to_string())].into(),
            user: Some("gina@example.com".into()),
            time: 5,
            first_seen: 1,
            last_seen: 5,
            count: 2,
            suppressed: 3,
            event_ids: vec!["e1".into(), "e2".into()],
            evidence: vec![
                Evidence {
                    event_id: "e1".into(),
                    time: 1,
                    kind: EventKind::FileRead,
                    path: Some("/x".into()),
                    ..Default::default()
                },
                Evidence {
                    event_id: "e2".into(),
                    time: 5,
                    kind: EventKind::ToolCall,
                    command: Some("ls".into()),
                    ..Default::default()
                },
            ],
            summary: "gina's agent read ~/.ssh/id_ed25519".into(),
            ..Default::default()
        }
    }

    #[test]
    fn events_round_trip_through_a_batch() {
        let events: Vec<Event> = (0..50).map(event).collect();
        let batch = events_to_batch(&events).unwrap();
        assert_eq!(batch.num_rows(), 50);
        assert_eq!(batch_to_events(&batch).unwrap(), events);
    }

    #[test]
    fn version_1_records_give_their_tool_arguments_as_args() {
        let e = Event {
            time: 1,
            kind: EventKind::ConnectorAction,
            attrs: [
                ("tool_input.to", "[\"x@elsewhere.example\"]"),
                ("gen_ai.tool.call.arguments.message.ccRecipients", "[]"),
                ("tool_parameters.mcp_tool_name", "send_email"),
                ("tool_input", "cut off {"),
            ]
            .into(),
            ..Default::default()
        };
        let batch = events_to_batch(std::slice::from_ref(&e)).unwrap();
        // Written now: read as written.
        assert_eq!(batch_to_events(&batch).unwrap(), std::slice::from_ref(&e));
        // The same record as version 1 wrote it.
        let mut meta = batch.schema().metadata().clone();
        meta.insert(SCHEMA_VERSION_KEY.to_string(), "1".to_string());
        let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(meta));
        let v1 = RecordBatch::try_new(schema, batch.columns().to_vec()).unwrap();
        let read = batch_to_events(&v1).unwrap();
        let keys: Vec<&str> = read[0].attrs.iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "args.message.ccRecipients",
                "args.to",
                "tool_input",
                "tool_parameters.mcp_tool_name"
            ]
        );
        // A projection names the new keys.
        let projection = EventProjection {
            attrs: Some(["args.to".to_string()].into()),
            ..Default::default()
        };
        let read = batch_to_events_filtered(&v1, &projection, |_| true).unwrap();
        assert_eq!(
            read.events[0].attrs.get("args.to"),
            Some("[\"x@elsewhere.example\"]")
        );
        assert_eq!(read.events[0].attrs.len(), 1);
    }

    #[test]
    fn a_filtered_read_defers_columns_and_keeps_what_the_filter_keeps() {
        let events: Vec<Event> = (0..50).map(event).collect();
        let batch = events_to_batch(&events).unwrap();
        let projection = EventProjection {
            kinds: Some(vec![EventKind::FileRead]),
            attrs: Some(["n".to_string()].into()),
            deferred: ["event_id".to_string(), "path".to_string()].into(),
            ..Default::default()
        };
        let read = batch_to_events_filtered(&batch, &projection, |e| {
            // Deferred columns are not there yet; the others are.
            assert!(e.event_id.is_empty() && e.path.is_none());
            assert!(e.user.is_some());
            e.user.as_deref() != Some("user0@example.com")
        })
        .unwrap();
        let want: Vec<Event> = events
            .iter()
            .filter(|e| {
                e.kind == EventKind::FileRead && e.user.as_deref() != Some("user0@example.com")
            })
            .map(|e| {
                let mut e = e.clone();
                e.attrs.retain(|k, _| k == "n");
                e
            })
            .collect();
        assert!(!want.is_empty());
        assert_eq!(read.events, want);
        assert_eq!(read.events.len() + read.other_times.len(), events.len());
    }

    #[test]
    fn alerts_round_trip_through_a_batch() {
        let mut empty = alert();
        empty.evidence.clear();
        empty.tags.clear();
        empty.user = None;
        let alerts = vec![alert(), empty, alert()];
        let batch = alerts_to_batch(&alerts).unwrap();
        assert_eq!(batch_to_alerts(&batch).unwrap(), alerts);
    }

    #[test]
    fn schemas_carry_version_and_record_metadata() {
        let s = event_schema();
        assert_eq!(
            s.metadata()[SCHEMA_VERSION_KEY],
            EVENT_SCHEMA_VERSION.to_string()
        );
        assert_eq!(s.metadata()[RECORD_KEY], "events");
        assert_eq!(alert_schema().metadata()[RECORD_KEY], "alerts");
        let names: Vec<&str> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, crate::EVENT_FIELDS);
    }

    #[test]
    fn reading_tolerates_reordered_plain_and_missing_columns() {
        // An "older archive": plain strings instead of dictionaries, microsecond
        // times without a zone, columns in another order, most columns absent.
        let batch = RecordBatch::try_from_iter(vec![
            (
                "kind",
                Arc::new(StringArray::from(vec!["file_read", "brand_new_kind"])) as ArrayRef,
            ),
            (
                "time",
                Arc::new(arrow::array::TimestampMicrosecondArray::from(vec![
                    1_000_000, 2_000_000,
                ])) as ArrayRef,
            ),
            (
                "user",
                Arc::new(StringArray::from(vec![Some("dana"), None])) as ArrayRef,
            ),
        ])
        .unwrap();
        let events = batch_to_events(&batch).unwrap();
        assert_eq!(events[0].time, 1_000_000_000);
        assert_eq!(events[0].kind, EventKind::FileRead);
        assert_eq!(events[1].kind, EventKind::Other);
        assert_eq!(events[0].user.as_deref(), Some("dana"));
        assert_eq!(events[1].user, None);
        assert!(events[0].attrs.is_empty());
    }

    #[test]
    fn reading_without_time_is_a_clear_error() {
        let batch = RecordBatch::try_from_iter(vec![(
            "kind",
            Arc::new(StringArray::from(vec!["file_read"])) as ArrayRef,
        )])
        .unwrap();
        let err = batch_to_events(&batch).unwrap_err().to_string();
        assert!(err.contains("\"time\""), "{err}");
    }
}
