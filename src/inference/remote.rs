//! A tier served elsewhere, over the OpenAI chat-completions protocol (a mistral.rs server on
//! GPU machines, vLLM, another tiergate, …). Token logprobs are used when the endpoint returns them.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use super::{DecodingProfile, Generation, PromptTooLong, Turn};

#[derive(Clone)]
pub struct RemoteRuntime {
    client: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<String>,
}

impl std::fmt::Debug for RemoteRuntime {
    // The API key stays out of debug output and logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteRuntime").field("url", &self.url).field("model", &self.model).finish()
    }
}

impl RemoteRuntime {
    /// `api_key_env` names the environment variable holding the endpoint's key (read once,
    /// here); a variable that is named but unset is an error, not an anonymous call.
    pub fn new(base_url: &str, model: &str, api_key_env: Option<&str>, timeout: Duration) -> anyhow::Result<RemoteRuntime> {
        let api_key = match api_key_env {
            Some(name) => Some(std::env::var(name).with_context(|| format!("environment variable {name} (the API key of {base_url}) is not set"))?),
            None => None,
        };
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5).min(timeout))
            .build()
            .context("building the HTTP client")?;
        let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
        Ok(RemoteRuntime { client, url, model: model.to_owned(), api_key })
    }

    pub async fn generate(&self, turns: &[Turn], decoding: &DecodingProfile) -> anyhow::Result<Generation> {
        let mut messages = Vec::new();
        if let Some(prompt) = &decoding.system_prompt {
            messages.push(json!({"role": "system", "content": prompt}));
        }
        messages.extend(super::chat_messages(turns));
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "max_tokens": decoding.max_tokens,
            "temperature": decoding.temperature,
            "logprobs": true,
        });
        if decoding.top_logprobs > 0 {
            body["top_logprobs"] = json!(decoding.top_logprobs);
        }
        let value = self.post(&body).await?;
        parse_completion(&value).with_context(|| format!("remote tier {}", self.url))
    }

    /// One greedy token for `turns`, with its top alternatives when the server gives them:
    /// P("yes") among them.
    pub async fn yes_probability(&self, turns: &[Turn]) -> anyhow::Result<Option<f64>> {
        let body = json!({"model": self.model, "messages": super::chat_messages(turns), "max_tokens": 1, "temperature": 0.0, "logprobs": true, "top_logprobs": 10});
        let value = self.post(&body).await?;
        let first = value.pointer("/choices/0/logprobs/content/0");
        let chosen = first.and_then(|t| Some((t.get("token")?.as_str()?, t.get("logprob")?.as_f64()?)));
        let alternatives: Vec<(String, f64)> = first
            .and_then(|t| t.get("top_logprobs"))
            .and_then(Value::as_array)
            .map(|top| top.iter().filter_map(|t| Some((t.get("token")?.as_str()?.to_owned(), t.get("logprob")?.as_f64()?))).collect())
            .unwrap_or_default();
        Ok(super::yes_probability(chosen, &alternatives))
    }

    /// Sends one chat-completion request; the answer's JSON, or why there is none.
    async fn post(&self, body: &Value) -> anyhow::Result<Value> {
        let mut request = self.client.post(&self.url).json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| anyhow::anyhow!("remote tier {}: {}", self.url, describe(&e)))?;
        let status = response.status();
        let text = response.text().await.with_context(|| format!("remote tier {}: reading the answer", self.url))?;
        // OpenAI-compatible servers (tiergate among them) name an over-long prompt this way.
        if status == reqwest::StatusCode::BAD_REQUEST && text.contains("context_length_exceeded") {
            return Err(anyhow::Error::new(PromptTooLong { limit_tokens: None }).context(format!("remote tier {}", self.url)));
        }
        if !status.is_success() {
            let snippet: String = text.chars().take(300).collect();
            anyhow::bail!("remote tier {} answered {status}: {snippet}", self.url);
        }
        serde_json::from_str(&text).with_context(|| format!("remote tier {}: the answer is not JSON", self.url))
    }
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        format!("unreachable ({error})")
    } else {
        error.to_string()
    }
}

/// Reads an OpenAI chat completion: the first choice's text, finish reason, token logprobs
/// (when present) and usage.
fn parse_completion(value: &Value) -> anyhow::Result<Generation> {
    let choice = value.pointer("/choices/0").context("the answer has no choices")?;
    let text = choice.pointer("/message/content").and_then(Value::as_str).unwrap_or_default().to_owned();
    let finish_reason = choice.get("finish_reason").and_then(Value::as_str).unwrap_or("unknown").to_owned();
    let tokens: Vec<&Value> = choice
        .pointer("/logprobs/content")
        .and_then(Value::as_array)
        .map(|tokens| tokens.iter().filter(|t| t.get("logprob").is_some_and(Value::is_number)).collect())
        .unwrap_or_default();
    let text_and_logprob = |t: &Value| {
        (t.get("token").and_then(Value::as_str).unwrap_or_default().to_owned(), t.get("logprob").and_then(Value::as_f64).unwrap_or_default() as f32)
    };
    let (token_texts, token_logprobs): (Vec<String>, Vec<f32>) = tokens.iter().map(|t| text_and_logprob(t)).unzip();
    let alternatives_of = |t: &Value| -> Vec<(String, f32)> {
        t.get("top_logprobs")
            .and_then(Value::as_array)
            .map(|top| top.iter().filter(|a| a.get("logprob").is_some_and(Value::is_number)).map(text_and_logprob).collect())
            .unwrap_or_default()
    };
    let mut token_alternatives: Vec<Vec<(String, f32)>> = tokens.iter().map(|t| alternatives_of(t)).collect();
    if token_alternatives.iter().all(Vec::is_empty) {
        token_alternatives.clear();
    }
    let usage = |name: &str| value.pointer(&format!("/usage/{name}")).and_then(Value::as_u64).unwrap_or_default();
    Ok(Generation {
        text,
        finish_reason,
        token_logprobs,
        token_texts,
        token_alternatives,
        prompt_tokens: usage("prompt_tokens"),
        completion_tokens: usage("completion_tokens"),
        self_check_yes: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_openai_completion_with_logprobs_is_read() {
        let answer = json!({
            "choices": [{"message": {"role": "assistant", "content": "Blue."}, "finish_reason": "stop",
                         "logprobs": {"content": [{"token": "Blue", "logprob": -0.25}, {"token": ".", "logprob": -0.5}]}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
        });

        let generation = parse_completion(&answer).unwrap();

        assert_eq!(generation.text, "Blue.");
        assert_eq!(generation.token_logprobs, vec![-0.25, -0.5]);
        assert_eq!(generation.token_texts, vec!["Blue", "."]);
        assert_eq!((generation.prompt_tokens, generation.completion_tokens), (12, 2));
    }

    #[test]
    fn the_alternatives_of_each_token_are_read_best_first() {
        let answer = json!({
            "choices": [{"message": {"content": "Yes"}, "finish_reason": "stop",
                         "logprobs": {"content": [{"token": "Yes", "logprob": -0.1,
                                                   "top_logprobs": [{"token": "Yes", "logprob": -0.1}, {"token": "No", "logprob": -2.4}]}]}}]
        });

        let generation = parse_completion(&answer).unwrap();

        assert_eq!(generation.token_alternatives, vec![vec![("Yes".to_owned(), -0.1), ("No".to_owned(), -2.4)]]);
    }

    #[test]
    fn an_answer_without_logprobs_has_none() {
        let answer = json!({"choices": [{"message": {"content": "Hi"}, "finish_reason": "length"}]});

        let generation = parse_completion(&answer).unwrap();

        assert!(generation.token_logprobs.is_empty());
        assert!(generation.token_alternatives.is_empty());
        assert_eq!(generation.finish_reason, "length");
        assert!(parse_completion(&json!({"choices": []})).is_err());
    }
}
