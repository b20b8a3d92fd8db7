//! What a generation request asks for, whatever its API (the knobs have
//! checked the model already): the input the reply derives from, the token cap, streaming, and the reply's
//! shape (plain text, JSON, or a call of an offered tool).

use serde_json::Value;

use crate::behavior::FakeBehavior;
use crate::generate::Api;
use crate::reply::{ToolCall, reply_text, reply_tokens};
use crate::shape::{json_reply, split_pieces, tool_arguments};

/// A tool call's argument string is streamed in at most this many pieces.
const MAX_ARGUMENT_PIECES: u32 = 4;

/// What a generation request asks for.
#[derive(Debug)]
pub(crate) struct Ask {
    pub(crate) stream: bool,
    /// The reply is derived from this.
    pub(crate) input: String,
    /// A chat's last message when it is the assistant's: the start of the
    /// reply, which the fake continues (as Ollama and llama.cpp do).
    pub(crate) prefill: Option<String>,
    pub(crate) prompt_tokens: u64,
    /// The request's own token cap, if any.
    pub(crate) cap: Option<u32>,
    pub(crate) include_usage: bool,
    pub(crate) shape: Shape,
}

/// What the reply is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Shape {
    Text,
    /// A JSON object, per the schema if one was given.
    Json(Option<Value>),
    /// A call of the tool of this name, with these parameters' schema.
    Tool {
        name: String,
        parameters: Value,
    },
}

/// What a reply is made of: its pieces, whether the cap cut it short, and
/// the tool call it is, if any.
pub(crate) struct Body {
    pub(crate) tokens: Vec<String>,
    pub(crate) capped: bool,
    pub(crate) call: Option<ToolCall>,
}

impl Ask {
    /// The parts of a request every generation endpoint reads.
    pub(crate) fn from_request(value: &Value, api: Api) -> Ask {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let mut all = Vec::new();
        let mut prefill = None;
        if let Some(system) = value.get("system").and_then(Value::as_str) {
            all.push(system.to_owned());
        }
        let input = if api.is_chat() {
            let messages = value
                .get("messages")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            all.extend(messages.iter().map(|m| text(&m["content"])));
            let (last, before) = match messages.split_last() {
                Some((last, before)) => (Some(last), before),
                None => (None, &[][..]),
            };
            if let Some(last) = last.filter(|m| m["role"] == "assistant") {
                prefill = Some(text(&last["content"]));
                before
                    .last()
                    .map(|m| text(&m["content"]))
                    .unwrap_or_default()
            } else {
                last.map(|m| text(&m["content"])).unwrap_or_default()
            }
        } else {
            // The legacy completions API also takes a list of prompts; the
            // fake answers the first.
            let prompts: Vec<String> = match &value["prompt"] {
                Value::Array(items) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                other => vec![text(other)],
            };
            all.extend(prompts.iter().cloned());
            prompts.into_iter().next().unwrap_or_default()
        };
        let cap_of = |v: Option<&Value>| {
            v.and_then(Value::as_i64)
                .filter(|n| *n >= 0)
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
        };
        let cap = cap_of(value.pointer("/options/num_predict"))
            .or_else(|| cap_of(value.get("max_tokens")))
            .or_else(|| cap_of(value.get("max_completion_tokens")));
        Ask {
            stream: value
                .get("stream")
                .and_then(Value::as_bool)
                .unwrap_or(api.is_ollama()),
            prompt_tokens: all
                .iter()
                .map(|t| t.split_whitespace().count() as u64)
                .sum(),
            input,
            prefill,
            cap,
            include_usage: value
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            shape: shape_of(value, api),
        }
    }

    /// The reply's pieces: the tokens of [`reply_tokens`], or the JSON
    /// object or tool arguments cut into pieces.
    pub(crate) fn body(&self, behavior: &FakeBehavior, id: u64) -> Body {
        let wanted = behavior.response_tokens;
        let n = self.cap.map_or(wanted, |cap| cap.min(wanted));
        let capped = n < wanted;
        let pieces = |text: &str, n: u32| split_pieces(text, usize::try_from(n).unwrap_or(1));
        match &self.shape {
            Shape::Text => {
                let mut tokens = reply_tokens(&self.input, wanted);
                let skip = self
                    .prefill
                    .as_deref()
                    .map_or(0, |prefill| prefilled(&tokens, prefill));
                tokens.drain(..skip);
                let n = self
                    .cap
                    .map_or(tokens.len(), |cap| tokens.len().min(cap as usize));
                let capped = n < tokens.len();
                tokens.truncate(n);
                Body {
                    tokens,
                    capped,
                    call: None,
                }
            }
            Shape::Json(schema) => Body {
                tokens: pieces(&json_reply(schema.as_ref(), &reply_text(&self.input, n)), n),
                capped,
                call: None,
            },
            Shape::Tool { name, parameters } => {
                let arguments = tool_arguments(parameters);
                Body {
                    tokens: pieces(&arguments.to_string(), n.min(MAX_ARGUMENT_PIECES)),
                    capped: false,
                    call: Some(ToolCall {
                        id,
                        name: name.clone(),
                        arguments,
                    }),
                }
            }
        }
    }
}

/// How many of the reply's `tokens` a prefilled assistant message already
/// holds: all it starts with, when it is a run of whole tokens.
fn prefilled(tokens: &[String], prefill: &str) -> usize {
    let mut covered = 0;
    for (i, token) in tokens.iter().enumerate() {
        if covered == prefill.len() {
            return i;
        }
        if !prefill[covered..].starts_with(token.as_str()) {
            return 0;
        }
        covered += token.len();
    }
    if covered == prefill.len() {
        tokens.len()
    } else {
        0
    }
}

/// The reply's shape: a tool call when the chat request offers tools
/// (unless `tool_choice` is `"none"` or the last message is a tool's
/// result, which the model answers in words), else JSON when asked for
/// (`format` for Ollama, `response_format` for OpenAI), else text.
fn shape_of(value: &Value, api: Api) -> Shape {
    if api.is_chat()
        && let Some(shape) = tool_shape(value)
    {
        return shape;
    }
    if api.is_ollama() {
        match value.get("format") {
            Some(Value::String(format)) if format == "json" => Shape::Json(None),
            Some(schema @ Value::Object(_)) => Shape::Json(Some(schema.clone())),
            _ => Shape::Text,
        }
    } else {
        let format = value.get("response_format");
        match format.and_then(|f| f.get("type")).and_then(Value::as_str) {
            Some("json_object") => Shape::Json(None),
            Some("json_schema") => Shape::Json(
                format
                    .and_then(|f| f.pointer("/json_schema/schema"))
                    .cloned(),
            ),
            _ => Shape::Text,
        }
    }
}

fn tool_shape(value: &Value) -> Option<Shape> {
    let tools = value.get("tools")?.as_array().filter(|t| !t.is_empty())?;
    let last_role = value
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str);
    if last_role == Some("tool") {
        return None;
    }
    let chosen = match value.get("tool_choice") {
        Some(Value::String(choice)) if choice == "none" => return None,
        Some(choice @ Value::Object(_)) => choice.pointer("/function/name").and_then(Value::as_str),
        _ => None,
    };
    fn name_of(tool: &Value) -> Option<&str> {
        tool.pointer("/function/name").and_then(Value::as_str)
    }
    let tool = chosen
        .and_then(|chosen| tools.iter().find(|t| name_of(t) == Some(chosen)))
        .unwrap_or(&tools[0]);
    Some(Shape::Tool {
        name: name_of(tool).unwrap_or_default().to_owned(),
        parameters: tool
            .pointer("/function/parameters")
            .cloned()
            .unwrap_or(Value::Null),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn shape(value: Value, api: Api) -> Shape {
        Ask::from_request(&value, api).shape
    }

    #[test]
    fn a_prefilled_assistant_message_is_continued() {
        let behavior = FakeBehavior {
            response_tokens: 6,
            ..FakeBehavior::default()
        };
        let full = reply_tokens("q", 6);
        let user = json!({"role": "user", "content": "q"});
        let prefix = full[..2].concat();
        let continued = json!({"messages": [user, {"role": "assistant", "content": prefix}],
            "max_tokens": 3});
        let ask = Ask::from_request(&continued, Api::OpenAi);
        let body = ask.body(&behavior, 1);
        assert_eq!(body.tokens, full[2..5].to_vec(), "the rest, capped");
        assert!(body.capped);
        let unknown = json!({"messages": [user, {"role": "assistant", "content": "zzz"}]});
        let body = Ask::from_request(&unknown, Api::OllamaChat).body(&behavior, 1);
        assert_eq!(
            body.tokens, full,
            "a prefix it did not write: a whole reply"
        );
        assert_eq!(prefilled(&full, &full.concat()), 6);
    }

    #[test]
    fn shapes_follow_the_request() {
        let weather = json!({"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}});
        let clock = json!({"type": "function", "function": {"name": "get_time"}});
        let user = json!([{"role": "user", "content": "hi"}]);
        let tools = json!({"messages": user, "tools": [weather, clock]});
        assert!(matches!(shape(tools.clone(), Api::OpenAi),
            Shape::Tool { name, .. } if name == "get_weather"));
        assert!(matches!(shape(tools.clone(), Api::OllamaChat),
            Shape::Tool { name, .. } if name == "get_weather"));
        let mut pick = tools.clone();
        pick["tool_choice"] = json!({"type": "function", "function": {"name": "get_time"}});
        assert!(matches!(shape(pick, Api::OpenAi),
            Shape::Tool { name, parameters } if name == "get_time" && parameters.is_null()));
        let mut none = tools.clone();
        none["tool_choice"] = json!("none");
        assert_eq!(shape(none, Api::OpenAi), Shape::Text);
        let mut answered = tools.clone();
        answered["messages"] = json!([{"role": "user", "content": "hi"},
            {"role": "tool", "content": "sunny"}]);
        assert_eq!(shape(answered, Api::OllamaChat), Shape::Text);
        assert_eq!(shape(json!({"tools": []}), Api::OpenAi), Shape::Text);
        assert_eq!(
            shape(json!({"tools": [weather]}), Api::OpenAiLegacy),
            Shape::Text
        );

        assert_eq!(
            shape(json!({"format": "json"}), Api::OllamaGenerate),
            Shape::Json(None)
        );
        let schema = json!({"type": "object"});
        assert_eq!(
            shape(json!({"format": schema}), Api::OllamaChat),
            Shape::Json(Some(schema.clone()))
        );
        assert_eq!(
            shape(
                json!({"response_format": {"type": "json_object"}}),
                Api::OpenAi
            ),
            Shape::Json(None)
        );
        assert_eq!(
            shape(
                json!({"response_format": {"type": "json_schema",
                "json_schema": {"name": "out", "schema": schema}}}),
                Api::OpenAi
            ),
            Shape::Json(Some(schema))
        );
        assert_eq!(
            shape(json!({"response_format": {"type": "text"}}), Api::OpenAi),
            Shape::Text
        );
        assert_eq!(
            shape(json!({"format": ""}), Api::OllamaGenerate),
            Shape::Text
        );
    }

    #[test]
    fn legacy_prompts_may_be_lists() {
        let ask = Ask::from_request(&json!({"prompt": ["one two", "three"]}), Api::OpenAiLegacy);
        assert_eq!((ask.input.as_str(), ask.prompt_tokens), ("one two", 3));
        assert!(!ask.stream);
    }
}
