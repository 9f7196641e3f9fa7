//! The `regex` of a mapping source: what part of a value the column keeps.
//!
//! Mappings run some patterns on nearly every record (the Claude Code event
//! name after an optional `claude_code.`, the MCP server between `mcp__` and
//! `__`). A regex with a capture group runs its slower capturing engine for
//! each of them, so the few shapes below are recognized when the mapping is
//! compiled, from the parsed pattern, and run as plain string operations.
//! They give the value the regex gives (tested against it); every other
//! pattern runs as the regex it is.

use regex::Regex;
use regex_syntax::hir::{Dot, Hir, HirKind, Look};

#[derive(Debug)]
pub enum Pattern {
    /// `^(?:P)?(?P<value>.+)$` (`optional`), `^P(?P<value>.+)$`, or the same
    /// with `.*` (`min` 0).
    Prefix {
        prefix: String,
        optional: bool,
        min: u32,
    },
    /// `^P(?P<value>.+?)S`: the value after `P` up to the first `S` (or `.*?`).
    Between {
        prefix: String,
        stop: String,
        min: u32,
    },
    Regex(Regex),
}

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, regex::Error> {
        let re = Regex::new(source)?;
        let parsed = regex_syntax::Parser::new().parse(source).ok();
        Ok(parsed
            .and_then(|hir| shape(&hir))
            .unwrap_or(Pattern::Regex(re)))
    }

    /// The part of `text` the pattern keeps: its `value` group, else the
    /// whole match. `None` when it does not match.
    pub fn value<'t>(&self, text: &'t str) -> Option<&'t str> {
        match self {
            Pattern::Prefix {
                prefix,
                optional,
                min,
            } => {
                if let Some(rest) = text.strip_prefix(prefix.as_str()) {
                    if fits(rest, *min) {
                        return Some(rest);
                    }
                }
                (*optional && fits(text, *min)).then_some(text)
            }
            Pattern::Between { prefix, stop, min } => {
                let rest = text.strip_prefix(prefix.as_str())?;
                // The shortest value of at least `min` characters followed by
                // `stop`; a value never spans a line break.
                let from = if *min == 0 {
                    0
                } else {
                    rest.chars().next()?.len_utf8()
                };
                let end = from + rest[from..].find(stop.as_str())?;
                let value = &rest[..end];
                (!value.contains('\n')).then_some(value)
            }
            Pattern::Regex(re) => {
                let caps = re.captures(text)?;
                Some(caps.name("value").or_else(|| caps.get(0))?.as_str())
            }
        }
    }
}

/// `.+` or `.*` matches all of `rest`: no line break, at least `min` characters.
fn fits(rest: &str, min: u32) -> bool {
    (min == 0 || !rest.is_empty()) && !rest.contains('\n')
}

/// The string-operation form of a parsed pattern, when it has one.
fn shape(hir: &Hir) -> Option<Pattern> {
    let HirKind::Concat(parts) = hir.kind() else {
        return None;
    };
    let [first, head, value, last] = parts.as_slice() else {
        return None;
    };
    if first.kind() != &HirKind::Look(Look::Start) {
        return None;
    }
    let (greedy, min) = value_group(value)?;
    let (prefix, optional) = match head.kind() {
        HirKind::Literal(lit) => (text(&lit.0)?, false),
        HirKind::Repetition(r) if r.min == 0 && r.max == Some(1) && r.greedy => {
            let HirKind::Literal(lit) = r.sub.kind() else {
                return None;
            };
            (text(&lit.0)?, true)
        }
        _ => return None,
    };
    match last.kind() {
        HirKind::Look(Look::End) if greedy => Some(Pattern::Prefix {
            prefix,
            optional,
            min,
        }),
        HirKind::Literal(lit) if !greedy && !optional => Some(Pattern::Between {
            prefix,
            stop: text(&lit.0)?,
            min,
        }),
        _ => None,
    }
}

/// `(?P<value>.+)`, `.*`, `.+?` or `.*?`: whether greedy, and its least length.
fn value_group(hir: &Hir) -> Option<(bool, u32)> {
    let HirKind::Capture(cap) = hir.kind() else {
        return None;
    };
    if cap.name.as_deref() != Some("value") {
        return None;
    }
    let HirKind::Repetition(r) = cap.sub.kind() else {
        return None;
    };
    let any_but_newline = *r.sub == Hir::dot(Dot::AnyCharExceptLF);
    (any_but_newline && r.min <= 1 && r.max.is_none()).then_some((r.greedy, r.min))
}

fn text(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape gives what the regex gives, on texts built from the
    /// pieces that make the edge cases: the prefix alone, repeated stops,
    /// line breaks, multi-byte characters, nothing at all.
    #[test]
    fn string_forms_give_what_the_regex_gives() {
        let shaped = [
            r"^(?:claude_code\.)?(?P<value>.+)$",
            r"^claude_code\.(?P<value>.+)$",
            r"^(?:claude_code\.)?(?P<value>.*)$",
            r"^claude_code\.(?P<value>.*)$",
            r"^mcp__(?P<value>.+?)__",
            r"^mcp__(?P<value>.*?)__",
            r"^tools/call (?P<value>.+)$",
        ];
        let kept_as_regex = [
            r"^mcp__.+?__(?P<value>.+)$",
            r"^tools/call (?P<value>\S+)$",
            r"^[a-z]+://(?P<value>[^/:]+)",
            r"(?i)^claude_code\.(?P<value>.+)$",
            r"^(?m:claude_code\.)(?P<other>.+)$",
            r"^claude_code\.(?P<value>.+)",
            r"^x(?P<value>.+)$|y",
        ];
        let pieces = [
            "claude_code.",
            "claude_code",
            "mcp__",
            "__",
            "_",
            "tools/call ",
            "a",
            "é",
            "\n",
            ".",
            " ",
        ];
        let mut rng = crate::test_rng::Rng(11);
        let texts: Vec<String> = (0..3000)
            .map(|_| {
                (0..rng.below(6))
                    .map(|_| pieces[rng.below(pieces.len() as u64) as usize])
                    .collect()
            })
            .collect();
        for (source, want_shape) in shaped
            .iter()
            .map(|s| (s, true))
            .chain(kept_as_regex.iter().map(|s| (s, false)))
        {
            let pattern = Pattern::new(source).expect("compiles");
            assert_eq!(
                !matches!(pattern, Pattern::Regex(_)),
                want_shape,
                "{source}: {pattern:?}"
            );
            let re = Regex::new(source).unwrap();
            for text in &texts {
                let want = re
                    .captures(text)
                    .and_then(|c| c.name("value").or_else(|| c.get(0)))
                    .map(|m| m.as_str());
                assert_eq!(pattern.value(text), want, "{source} on {text:?}");
            }
        }
    }

    #[test]
    fn a_broken_pattern_is_an_error() {
        assert!(Pattern::new("^(unclosed").is_err());
    }
}
