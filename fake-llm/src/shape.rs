//! What a reply looks like beyond plain text: a call of a tool the request
//! offered ([`tool_arguments`]), or a JSON object when the request asks for
//! JSON output ([`json_reply`]); and how such a string is cut into streamed
//! pieces ([`split_pieces`]).

use serde_json::{Map, Value, json};

use crate::reply::fnv1a;

/// Short string values for tool arguments, picked by a hash of the name.
const PLACES: [&str; 8] = [
    "Tokyo", "Paris", "Lima", "Oslo", "Cairo", "Quito", "Hanoi", "Accra",
];

/// How deep [`fill`] follows nested object and array schemas.
const MAX_DEPTH: u32 = 4;

/// The arguments of the fake's call of a tool whose `function.parameters`
/// JSON schema is `parameters`: an object with every property of the
/// schema, each a deterministic value of its type. A string property gets
/// a short word chosen by its name (e.g. `{"city":"Tokyo"}`), an `enum` its
/// first value, an integer, number or boolean one derived from its name;
/// no schema or no properties give `{}`.
pub fn tool_arguments(parameters: &Value) -> Value {
    if parameters.get("properties").is_some() {
        fill(parameters, "", &place, 0)
    } else {
        json!({})
    }
}

/// The reply text for a request that asks for JSON output: with a schema
/// that has properties, an object filling them (string properties hold
/// `text`); otherwise (`"json"`, `json_object`, a schema without
/// properties) `{"answer": text}`. Compact JSON.
pub fn json_reply(schema: Option<&Value>, text: &str) -> String {
    let value = match schema {
        Some(schema) if schema.get("properties").is_some() => {
            fill(schema, "", &|_: &str| text.to_owned(), 0)
        }
        _ => json!({"answer": text}),
    };
    value.to_string()
}

/// `text` in `n` pieces (at least one, at most one per character) of
/// nearly equal length, split at character boundaries; they concatenate
/// back to `text`.
pub fn split_pieces(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let n = n.clamp(1, chars.len().max(1));
    let (base, extra) = (chars.len() / n, chars.len() % n);
    let mut pieces = Vec::with_capacity(n);
    let mut at = 0;
    for i in 0..n {
        let len = base + usize::from(i < extra);
        pieces.push(chars[at..at + len].iter().collect());
        at += len;
    }
    pieces
}

/// A short word for a string named `name`.
fn place(name: &str) -> String {
    let i = usize::try_from(fnv1a(name.as_bytes()) % PLACES.len() as u64).unwrap_or(0);
    PLACES[i].to_owned()
}

/// A value matching `schema` (the part of JSON schema replies need), for
/// a property named `name`; strings come from `string_of(name)`.
fn fill(schema: &Value, name: &str, string_of: &dyn Fn(&str) -> String, depth: u32) -> Value {
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    if let Some(constant) = schema.get("const") {
        return constant.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = schema
            .get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            return fill(first, name, string_of, depth);
        }
    }
    let hash = fnv1a(name.as_bytes());
    match schema_type(schema) {
        "object" => {
            let mut object = Map::new();
            if depth < MAX_DEPTH
                && let Some(properties) = schema.get("properties").and_then(Value::as_object)
            {
                for (key, property) in properties {
                    object.insert(key.clone(), fill(property, key, string_of, depth + 1));
                }
            }
            Value::Object(object)
        }
        "array" => match schema.get("items") {
            Some(items) if depth < MAX_DEPTH => json!([fill(items, name, string_of, depth + 1)]),
            _ => json!([]),
        },
        "integer" => json!(hash % 100),
        "number" => json!((hash % 1000) as f64 / 10.0),
        "boolean" => json!(hash.is_multiple_of(2)),
        "null" => Value::Null,
        _ => json!(string_of(name)),
    }
}

/// The schema's type: the first non-null one of a list; `object` when it
/// has properties but no type; `string` otherwise.
fn schema_type(schema: &Value) -> &str {
    match schema.get("type") {
        Some(Value::String(kind)) => kind,
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|k| *k != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_arguments_fill_every_property_by_type() {
        let parameters = json!({
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
                "detailed": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "where": {"type": "object", "properties": {"lat": {"type": "number"}}},
                "note": {"type": ["null", "string"]},
            },
            "required": ["city"],
        });
        let args = tool_arguments(&parameters);
        assert_eq!(args, tool_arguments(&parameters), "deterministic");
        let object = args.as_object().expect("an object");
        assert_eq!(object.len(), 7);
        assert!(PLACES.contains(&args["city"].as_str().expect("city is a string")));
        assert_eq!(args["unit"], "celsius");
        assert!(args["days"].is_u64());
        assert!(args["detailed"].is_boolean());
        assert!(args["tags"][0].is_string());
        assert!(args["where"]["lat"].is_f64());
        assert!(args["note"].is_string());
        assert_eq!(tool_arguments(&Value::Null), json!({}));
        assert_eq!(tool_arguments(&json!({"type": "object"})), json!({}));
    }

    #[test]
    fn json_replies_are_objects() {
        let text = "the \"quick\" fox";
        let plain: Value = serde_json::from_str(&json_reply(None, text)).expect("valid JSON");
        assert_eq!(plain, json!({"answer": text}));
        let bare = json_reply(Some(&json!({"type": "object"})), text);
        assert_eq!(bare, json_reply(None, text));
        let schema = json!({"type": "object", "properties": {
            "title": {"type": "string"}, "count": {"type": "integer"}}});
        let filled: Value =
            serde_json::from_str(&json_reply(Some(&schema), text)).expect("valid JSON");
        assert_eq!(filled["title"], text);
        assert!(filled["count"].is_u64());
    }

    #[test]
    fn pieces_rejoin_and_respect_bounds() {
        let text = r#"{"city":"Tokyo"}"#;
        for n in [0, 1, 3, 4, 16, 100] {
            let pieces = split_pieces(text, n);
            assert_eq!(pieces.concat(), text, "n={n}");
            assert_eq!(pieces.len(), n.clamp(1, text.len()), "n={n}");
            assert!(pieces.iter().all(|p| !p.is_empty()), "n={n}");
        }
        assert_eq!(split_pieces("", 3), vec![String::new()]);
        assert_eq!(split_pieces("héllo", 5).len(), 5);
    }
}
