//! Line formats, detected per line.
//!
//! * `{prompt, completion}` and MFTCoder's aliases (`prompt/answer`, `prompt/response`,
//!   `input/output`, `instruction/output`, `instruction/response`, `question/answer`,
//!   `question/response`, `query/answer`), optional `system`;
//! * `{"chat_rounds": [{"role", "content"}, ...]}` (roles `system`, `human|user`,
//!   `bot|assistant|gpt`; optional leading system, then strictly alternating user/assistant,
//!   ending with an assistant turn);
//! * `{text}`: plain language modelling.
//!
//! An optional `split` (`train`, `valid`|`validation`|`dev`, `test`) is honoured; other
//! fields are ignored.
//!
//! ```
//! use data::format::{parse_line, Content, Split};
//! let r = parse_line(r#"{"question": "2+2?", "answer": "4", "split": "valid"}"#, "f".as_ref(), 1).unwrap();
//! assert_eq!(r.split, Some(Split::Valid));
//! assert_eq!(r.content, Content::Chat { system: None, rounds: vec![("2+2?".into(), "4".into())] });
//! ```

use crate::{DataError, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Training samples.
    Train,
    /// Validation samples (loss curves, CoBa probe).
    Valid,
    /// Held-out test samples (never trained on, not used by the trainer).
    Test,
}

impl Split {
    /// All splits in order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Valid, Split::Test];

    /// Index in [`Split::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// `train`, `valid` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }
}

/// The text of one sample before templating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A conversation: optional system message and (user, assistant) rounds; loss on every
    /// assistant turn.
    Chat {
        /// System message.
        system: Option<String>,
        /// (user, assistant) pairs, at least one.
        rounds: Vec<(String, String)>,
    },
    /// Plain text; loss on every token.
    Text(String),
}

/// One parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The `split` field, if present.
    pub split: Option<Split>,
    /// The sample.
    pub content: Content,
}

/// (prompt field, completion field) pairs, in detection order.
pub const PAIR_ALIASES: [(&str, &str); 9] = [
    ("prompt", "completion"),
    ("prompt", "answer"),
    ("prompt", "response"),
    ("input", "output"),
    ("instruction", "output"),
    ("instruction", "response"),
    ("question", "answer"),
    ("question", "response"),
    ("query", "answer"),
];

struct Ctx<'a> {
    path: &'a Path,
    line: usize,
}

impl Ctx<'_> {
    fn missing(&self, field: impl Into<String>) -> DataError {
        DataError::MissingField {
            path: self.path.to_path_buf(),
            line: self.line,
            field: field.into(),
        }
    }
    fn wrong(&self, field: impl Into<String>, expected: &'static str) -> DataError {
        DataError::WrongType {
            path: self.path.to_path_buf(),
            line: self.line,
            field: field.into(),
            expected,
        }
    }
    fn string(&self, obj: &Map<String, Value>, key: &str, field: &str) -> Result<String> {
        match obj.get(key) {
            None => Err(self.missing(field)),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(self.wrong(field, "a string")),
        }
    }
    fn opt_string(&self, obj: &Map<String, Value>, key: &str) -> Result<Option<String>> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.wrong(key, "a string")),
        }
    }
}

/// Parses one JSONL line of `path` (line number `line`, 1-based, for errors).
pub fn parse_line(text: &str, path: &Path, line: usize) -> Result<Record> {
    let ctx = Ctx { path, line };
    let value: Value = serde_json::from_str(text).map_err(|e| DataError::Json {
        path: path.to_path_buf(),
        line,
        message: e.to_string(),
    })?;
    let Value::Object(obj) = value else {
        return Err(DataError::Json {
            path: path.to_path_buf(),
            line,
            message: "expected a JSON object".into(),
        });
    };
    let split = match ctx.opt_string(&obj, "split")? {
        None => None,
        Some(s) => Some(match s.as_str() {
            "train" => Split::Train,
            "valid" | "validation" | "dev" => Split::Valid,
            "test" => Split::Test,
            _ => {
                return Err(DataError::BadValue {
                    path: path.to_path_buf(),
                    line,
                    field: "split".into(),
                    value: s,
                    allowed: "train, valid|validation|dev or test",
                })
            }
        }),
    };
    let content = if let Some(rounds) = obj.get("chat_rounds") {
        parse_chat(&ctx, rounds)?
    } else if obj.contains_key("text") {
        Content::Text(ctx.string(&obj, "text", "text")?)
    } else {
        let Some((p, c)) = PAIR_ALIASES
            .iter()
            .find(|(p, c)| obj.contains_key(*p) && obj.contains_key(*c))
        else {
            // Name the field most likely meant.
            let field = match PAIR_ALIASES.iter().find(|(p, _)| obj.contains_key(*p)) {
                Some((p, _)) => {
                    let mut alts: Vec<&str> = PAIR_ALIASES
                        .iter()
                        .filter(|(q, _)| q == p)
                        .map(|(_, c)| *c)
                        .collect();
                    alts.dedup();
                    alts.join("|")
                }
                None => "prompt+completion|chat_rounds|text".to_string(),
            };
            return Err(ctx.missing(field));
        };
        let system = ctx.opt_string(&obj, "system")?;
        Content::Chat {
            system,
            rounds: vec![(ctx.string(&obj, p, p)?, ctx.string(&obj, c, c)?)],
        }
    };
    Ok(Record { split, content })
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Role {
    System,
    User,
    Assistant,
}

fn parse_chat(ctx: &Ctx, rounds: &Value) -> Result<Content> {
    let Value::Array(items) = rounds else {
        return Err(ctx.wrong("chat_rounds", "an array"));
    };
    let mut system = None;
    let mut pairs = Vec::new();
    let mut pending_user: Option<String> = None;
    for (i, item) in items.iter().enumerate() {
        let Value::Object(obj) = item else {
            return Err(ctx.wrong(format!("chat_rounds[{i}]"), "an object"));
        };
        let role_s = ctx.string(obj, "role", &format!("chat_rounds[{i}].role"))?;
        let content = ctx.string(obj, "content", &format!("chat_rounds[{i}].content"))?;
        let role = match role_s.to_ascii_lowercase().as_str() {
            "system" => Role::System,
            "human" | "user" => Role::User,
            "bot" | "assistant" | "gpt" => Role::Assistant,
            _ => {
                return Err(DataError::UnknownRole {
                    path: ctx.path.to_path_buf(),
                    line: ctx.line,
                    field: format!("chat_rounds[{i}].role"),
                    role: role_s,
                })
            }
        };
        let order = |message: &str| DataError::RoleOrder {
            path: ctx.path.to_path_buf(),
            line: ctx.line,
            field: format!("chat_rounds[{i}].role"),
            message: message.to_string(),
        };
        match (role, pending_user.is_some()) {
            (Role::System, _) if i == 0 => system = Some(content),
            (Role::System, _) => return Err(order("a system message may only come first")),
            (Role::User, false) => pending_user = Some(content),
            (Role::User, true) => return Err(order("two user turns in a row")),
            (Role::Assistant, true) => {
                let user = pending_user.take().unwrap_or_default();
                pairs.push((user, content));
            }
            (Role::Assistant, false) => {
                return Err(order("an assistant turn must follow a user turn"))
            }
        }
    }
    if pending_user.is_some() {
        return Err(DataError::RoleOrder {
            path: ctx.path.to_path_buf(),
            line: ctx.line,
            field: format!("chat_rounds[{}].role", items.len() - 1),
            message: "the conversation must end with an assistant turn".into(),
        });
    }
    if pairs.is_empty() {
        return Err(ctx.missing("chat_rounds[].role=assistant"));
    }
    Ok(Content::Chat {
        system,
        rounds: pairs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Record> {
        parse_line(s, Path::new("x.jsonl"), 7)
    }

    #[test]
    fn every_alias_pair_is_detected() {
        for (a, b) in PAIR_ALIASES {
            let line = format!(r#"{{"{a}": "P", "{b}": "C", "system": "S", "other": 3}}"#);
            let r = p(&line).unwrap();
            assert_eq!(
                r.content,
                Content::Chat {
                    system: Some("S".into()),
                    rounds: vec![("P".into(), "C".into())]
                }
            );
            assert_eq!(r.split, None);
        }
    }

    #[test]
    fn chat_rounds_multi_round() {
        let r = p(r#"{"chat_rounds": [{"role":"system","content":"s"},{"role":"human","content":"a"},{"role":"bot","content":"b"},{"role":"user","content":"c"},{"role":"gpt","content":"d"}]}"#).unwrap();
        assert_eq!(
            r.content,
            Content::Chat {
                system: Some("s".into()),
                rounds: vec![("a".into(), "b".into()), ("c".into(), "d".into())]
            }
        );
    }

    #[test]
    fn text_and_split() {
        let r = p(r#"{"text": "hello", "split": "test"}"#).unwrap();
        assert_eq!(r.content, Content::Text("hello".into()));
        assert_eq!(r.split, Some(Split::Test));
    }

    #[test]
    fn errors_name_the_field() {
        let e = p(r#"{"prompt": "a"}"#).unwrap_err().to_string();
        assert!(e.contains("x.jsonl:7") && e.contains("completion"), "{e}");
        let e = p(r#"{"prompt": "a", "completion": 3}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`completion` must be a string"), "{e}");
        let e = p(
            r#"{"chat_rounds": [{"role":"human","content":"a"},{"role":"robot","content":"b"}]}"#,
        )
        .unwrap_err();
        assert!(
            matches!(e, DataError::UnknownRole { ref field, .. } if field == "chat_rounds[1].role")
        );
        let e = p(
            r#"{"chat_rounds": [{"role":"human","content":"a"},{"role":"human","content":"b"}]}"#,
        )
        .unwrap_err();
        assert!(
            matches!(e, DataError::RoleOrder { ref field, .. } if field == "chat_rounds[1].role")
        );
        let e = p(r#"{"text": "a", "split": "dev2"}"#).unwrap_err();
        assert_eq!(e.skip_reason(), Some("bad_value"));
        assert!(matches!(
            p("[1]").unwrap_err(),
            DataError::Json { line: 7, .. }
        ));
        assert!(matches!(p("{oops").unwrap_err(), DataError::Json { .. }));
    }
}
