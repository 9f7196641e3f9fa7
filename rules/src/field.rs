//! Compiled field references: a rule names a column, `attrs.<key>` or
//! `args.<member>` once, at load, and the engine reads it without matching
//! the name on every event.

use event::{Event, FieldValue};

/// One column of [`Event`], or an attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FieldRef {
    Time,
    ObservedTime,
    EventId,
    Tenant,
    Source,
    Product,
    Kind,
    Action,
    Outcome,
    User,
    Session,
    Host,
    Tool,
    McpServer,
    Connector,
    Target,
    Domain,
    Path,
    Command,
    Model,
    TokensIn,
    TokensOut,
    Interactive,
    Attr(Box<str>),
}

impl FieldRef {
    /// Parses a rule's field name; `None` for anything `Event::field` would not know.
    pub(crate) fn parse(name: &str) -> Option<FieldRef> {
        use FieldRef::*;
        Some(match name {
            "time" => Time,
            "observed_time" => ObservedTime,
            "event_id" => EventId,
            "tenant" => Tenant,
            "source" => Source,
            "product" => Product,
            "kind" => Kind,
            "action" => Action,
            "outcome" => Outcome,
            "user" => User,
            "session" => Session,
            "host" => Host,
            "tool" => Tool,
            "mcp_server" => McpServer,
            "connector" => Connector,
            "target" => Target,
            "domain" => Domain,
            "path" => Path,
            "command" => Command,
            "model" => Model,
            "tokens_in" => TokensIn,
            "tokens_out" => TokensOut,
            "interactive" => Interactive,
            other => {
                // `args.<member>` is short for `attrs.args.<member>`.
                if other.len() > "args.".len() && other.starts_with("args.") {
                    return Some(Attr(other.into()));
                }
                let key = other.strip_prefix("attrs.")?;
                if key.is_empty() {
                    return None;
                }
                Attr(key.into())
            }
        })
    }

    /// The name as a rule writes it.
    pub(crate) fn name(&self) -> String {
        use FieldRef::*;
        match self {
            Attr(k) => format!("attrs.{k}"),
            Time => "time".into(),
            ObservedTime => "observed_time".into(),
            EventId => "event_id".into(),
            Tenant => "tenant".into(),
            Source => "source".into(),
            Product => "product".into(),
            Kind => "kind".into(),
            Action => "action".into(),
            Outcome => "outcome".into(),
            User => "user".into(),
            Session => "session".into(),
            Host => "host".into(),
            Tool => "tool".into(),
            McpServer => "mcp_server".into(),
            Connector => "connector".into(),
            Target => "target".into(),
            Domain => "domain".into(),
            Path => "path".into(),
            Command => "command".into(),
            Model => "model".into(),
            TokensIn => "tokens_in".into(),
            TokensOut => "tokens_out".into(),
            Interactive => "interactive".into(),
        }
    }

    /// Same answer as `Event::field(self.name())`, without the name lookup.
    #[inline]
    pub(crate) fn get<'a>(&self, e: &'a Event) -> Option<FieldValue<'a>> {
        use FieldValue::{Bool, Int, Str};
        #[inline]
        fn opt(v: &Option<event::Text>) -> Option<FieldValue<'_>> {
            v.as_deref().map(Str)
        }
        match self {
            FieldRef::Time => Some(Int(e.time)),
            FieldRef::ObservedTime => Some(Int(e.observed_time)),
            FieldRef::EventId => Some(Str(&e.event_id)),
            FieldRef::Tenant => Some(Str(&e.tenant)),
            FieldRef::Source => Some(Str(e.source.as_str())),
            FieldRef::Product => opt(&e.product),
            FieldRef::Kind => Some(Str(e.kind.as_str())),
            FieldRef::Action => opt(&e.action),
            FieldRef::Outcome => Some(Str(e.outcome.as_str())),
            FieldRef::User => opt(&e.user),
            FieldRef::Session => opt(&e.session),
            FieldRef::Host => opt(&e.host),
            FieldRef::Tool => opt(&e.tool),
            FieldRef::McpServer => opt(&e.mcp_server),
            FieldRef::Connector => opt(&e.connector),
            FieldRef::Target => opt(&e.target),
            FieldRef::Domain => opt(&e.domain),
            FieldRef::Path => opt(&e.path),
            FieldRef::Command => opt(&e.command),
            FieldRef::Model => opt(&e.model),
            FieldRef::TokensIn => e.tokens_in.map(Int),
            FieldRef::TokensOut => e.tokens_out.map(Int),
            FieldRef::Interactive => Some(Bool(e.interactive)),
            FieldRef::Attr(k) => e.attrs.get(k).map(Str),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_column_can_be_named_by_a_rule() {
        // The event's column list is the one source of truth: a column added
        // to `Event` and `EVENT_FIELDS` but not here fails this test.
        // `attrs` is named key by key (`attrs.<key>`).
        for name in event::EVENT_FIELDS.iter().filter(|n| **n != "attrs") {
            let f = FieldRef::parse(name).unwrap_or_else(|| panic!("rules cannot name `{name}`"));
            assert_eq!(f.name(), *name);
        }
    }
    use event::{EventKind, Source, EVENT_FIELDS};

    #[test]
    fn compiled_fields_agree_with_event_field_for_every_column() {
        let e = Event {
            time: 5,
            observed_time: 6,
            event_id: "id".into(),
            tenant: "t".into(),
            source: Source::Agent,
            product: Some("p".into()),
            kind: EventKind::ToolCall,
            action: Some("a".into()),
            user: Some("u".into()),
            session: Some("s".into()),
            tool: Some("Bash".into()),
            command: Some("ls".into()),
            tokens_in: Some(3),
            interactive: true,
            attrs: [("x.y".to_string(), "z".to_string())].into(),
            ..Default::default()
        };
        for name in EVENT_FIELDS.iter().filter(|n| **n != "attrs") {
            let f = FieldRef::parse(name).expect("every column parses");
            assert_eq!(f.get(&e), e.field(name), "{name}");
            assert_eq!(f.name(), *name);
        }
        let f = FieldRef::parse("attrs.x.y").unwrap();
        assert_eq!(f.get(&e), e.field("attrs.x.y"));
        assert!(FieldRef::parse("attrs.").is_none());
        assert!(FieldRef::parse("attrs").is_none());
        assert!(FieldRef::parse("usr").is_none());
    }
}
