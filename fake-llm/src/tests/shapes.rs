//! Replies beyond plain text: tool calls and JSON output, on both APIs,
//! whole and streamed.

use serde_json::{Value, json};

use super::{MODEL, chat_text, fake, post};
use crate::{DEFAULT_RESPONSE_TOKENS, FakeBehavior, json_reply, reply_text, tool_arguments};

const PROMPT: &str = "what is the weather in Paris";

fn weather() -> Value {
    json!({"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
            "required": ["city"]}}})
}

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
        "tools": [weather(), {"type": "function", "function": {"name": "other"}}]});
    for (key, value) in extra.as_object().expect("an object") {
        body[key] = value.clone();
    }
    body
}

fn expected_arguments() -> Value {
    tool_arguments(&weather()["function"]["parameters"])
}

#[tokio::test]
async fn openai_tool_call_whole_and_streamed() {
    let fake = fake(FakeBehavior::default()).await;
    let body = post(&fake, "/v1/chat/completions", chat(json!({})))
        .await
        .json();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let message = &choice["message"];
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["content"], Value::Null);
    let calls = message["tool_calls"].as_array().expect("tool_calls");
    assert_eq!(calls.len(), 1);
    let id = calls[0]["id"].as_str().expect("id");
    assert!(id.starts_with("call_") && id.len() == 29, "{id}");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments = calls[0]["function"]["arguments"]
        .as_str()
        .expect("a JSON string");
    assert_eq!(
        serde_json::from_str::<Value>(arguments).expect("JSON"),
        expected_arguments()
    );

    let events = post(
        &fake,
        "/v1/chat/completions",
        chat(json!({"stream": true, "stream_options": {"include_usage": true}})),
    )
    .await
    .sse();
    let delta = |i: usize| events[i]["choices"][0]["delta"].clone();
    let first = delta(0);
    assert_eq!(first["role"], "assistant");
    assert_eq!(first["content"], Value::Null);
    assert_eq!(
        first["tool_calls"][0],
        json!({"index": 0, "id": first["tool_calls"][0]["id"], "type": "function",
            "function": {"name": "get_weather", "arguments": ""}})
    );
    let pieces: Vec<&Value> = events[1..]
        .iter()
        .take_while(|e| e["choices"][0]["finish_reason"].is_null() && e["choices"] != json!([]))
        .collect();
    assert!((2..=4).contains(&pieces.len()), "a few pieces: {events:?}");
    let mut streamed = String::new();
    for piece in &pieces {
        let calls = &piece["choices"][0]["delta"]["tool_calls"];
        assert_eq!(calls[0]["index"], 0);
        assert!(calls[0].get("id").is_none() && calls[0]["function"].get("name").is_none());
        streamed.push_str(calls[0]["function"]["arguments"].as_str().expect("piece"));
    }
    assert_eq!(
        serde_json::from_str::<Value>(&streamed).expect("JSON"),
        expected_arguments()
    );
    let finish = &events[pieces.len() + 1];
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    let usage = &events[pieces.len() + 2];
    assert_eq!(usage["usage"]["completion_tokens"], pieces.len());
    assert_eq!(events.last(), Some(&json!("[DONE]")));
    assert_eq!(events.len(), pieces.len() + 4);
}

#[tokio::test]
async fn ollama_tool_call_whole_and_streamed() {
    let fake = fake(FakeBehavior::default()).await;
    let body = post(&fake, "/api/chat", chat(json!({"stream": false})))
        .await
        .json();
    assert_eq!(body["done"], true);
    assert_eq!(body["done_reason"], "stop");
    let message = &body["message"];
    assert_eq!(
        (message["role"].clone(), message["content"].clone()),
        (json!("assistant"), json!(""))
    );
    let call = &message["tool_calls"][0];
    assert!(call["id"].as_str().expect("id").starts_with("call_"));
    assert_eq!(
        call["function"],
        json!({"index": 0, "name": "get_weather", "arguments": expected_arguments()})
    );

    let lines = post(&fake, "/api/chat", chat(json!({}))).await.ndjson();
    assert_eq!(lines.len(), 2, "the call, then done: {lines:?}");
    assert_eq!(lines[0]["done"], false);
    assert_eq!(lines[0]["message"]["content"], "");
    assert_eq!(
        lines[0]["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(lines[1]["done"], true);
    assert_eq!(lines[1]["done_reason"], "stop");
    assert!(lines[1]["message"].get("tool_calls").is_none());
}

#[tokio::test]
async fn tools_give_way_to_words_after_a_tool_result_or_tool_choice_none() {
    let fake = fake(FakeBehavior::default()).await;
    let answered = json!({"messages": [{"role": "user", "content": PROMPT},
        {"role": "tool", "content": "sunny"}]});
    let openai = post(&fake, "/v1/chat/completions", chat(answered.clone()))
        .await
        .json();
    assert_eq!(
        openai["choices"][0]["message"]["content"],
        reply_text("sunny", DEFAULT_RESPONSE_TOKENS)
    );
    assert_eq!(openai["choices"][0]["finish_reason"], "stop");
    let mut ollama_body = chat(answered);
    ollama_body["stream"] = json!(false);
    let ollama = post(&fake, "/api/chat", ollama_body).await.json();
    assert_eq!(
        ollama["message"]["content"],
        reply_text("sunny", DEFAULT_RESPONSE_TOKENS)
    );
    let none = post(
        &fake,
        "/v1/chat/completions",
        chat(json!({"tool_choice": "none"})),
    )
    .await;
    assert!(
        none.json()["choices"][0]["message"]
            .get("tool_calls")
            .is_none()
    );
    let named = json!({"tool_choice": {"type": "function", "function": {"name": "other"}}});
    let other = post(&fake, "/v1/chat/completions", chat(named))
        .await
        .json();
    let call = &other["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(
        (call["name"].clone(), call["arguments"].clone()),
        (json!("other"), json!("{}"))
    );
}

#[tokio::test]
async fn json_formats_reply_with_json_objects() {
    let fake = fake(FakeBehavior::default()).await;
    let text = reply_text(PROMPT, DEFAULT_RESPONSE_TOKENS);
    let user = json!([{"role": "user", "content": PROMPT}]);
    let whole = post(
        &fake,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": user, "response_format": {"type": "json_object"}}),
    )
    .await
    .json();
    let content = whole["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert_eq!(content, json_reply(None, &text));
    assert_eq!(
        serde_json::from_str::<Value>(content).expect("JSON"),
        json!({"answer": text})
    );

    let schema = json!({"type": "object", "properties": {"city": {"type": "string"},
        "days": {"type": "integer"}}});
    let streamed = post(
        &fake,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": user, "stream": true, "response_format":
            {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}}),
    )
    .await
    .sse();
    let content = chat_text(&streamed);
    assert_eq!(content, json_reply(Some(&schema), &text));
    assert!(streamed.len() > 4, "streamed in pieces");

    let lines = post(
        &fake,
        "/api/generate",
        json!({"model": MODEL, "prompt": PROMPT, "format": "json"}),
    )
    .await
    .ndjson();
    assert_eq!(lines.len(), DEFAULT_RESPONSE_TOKENS as usize + 1);
    let generated: String = lines
        .iter()
        .filter_map(|l| l["response"].as_str())
        .collect();
    assert_eq!(generated, json_reply(None, &text));
    let chat = post(
        &fake,
        "/api/chat",
        json!({"model": MODEL, "messages": user, "format": schema, "stream": false}),
    )
    .await
    .json();
    let parsed: Value =
        serde_json::from_str(chat["message"]["content"].as_str().expect("content")).expect("JSON");
    assert_eq!(parsed["city"], text);
    assert!(parsed["days"].is_u64());
}
