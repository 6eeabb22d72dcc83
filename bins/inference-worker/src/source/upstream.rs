//! Tokens from an OpenAI-compatible server (vLLM, TGI, llama.cpp, …) via
//! streaming `POST /v1/completions`.
//!
//! The rule it keeps: one HTTP request per stream, owned by the stream, so
//! dropping the stream closes the connection and the server aborts the
//! generation; nothing is retried behind the job's back (a retried
//! completion would restart the text).

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{Stream, StreamExt, stream};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::{GenerateRequest, SourceError, TokenSource, TokenStream};

/// How long to wait for the upstream to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence between two chunks before the stream counts as broken
/// (a slow first token on a loaded server takes seconds, not a minute).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of an error body is kept for the error message.
const ERROR_BODY_LIMIT: usize = 512;

/// A token source backed by an OpenAI-compatible completions endpoint.
#[derive(Clone)]
pub struct OpenAiUpstream {
    client: reqwest::Client,
    endpoint: Url,
    model: String,
    api_key: Option<SecretString>,
}

impl OpenAiUpstream {
    /// A source that streams from `{base}/v1/completions` with `model`.
    pub fn new(
        base: &Url,
        model: impl Into<String>,
        api_key: Option<SecretString>,
    ) -> Result<Self, SourceError> {
        resilience::tls::ensure_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()?;
        Ok(Self {
            client,
            endpoint: completions_endpoint(base),
            model: model.into(),
            api_key,
        })
    }

    /// The URL requests go to.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }
}

impl fmt::Debug for OpenAiUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The API key is never formatted.
        f.debug_struct("OpenAiUpstream")
            .field("endpoint", &self.endpoint.as_str())
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl TokenSource for OpenAiUpstream {
    fn generate(&self, request: &GenerateRequest) -> TokenStream {
        let body = serde_json::json!({
            "model": self.model,
            "prompt": request.prompt,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "seed": request.seed,
            "stream": true,
        });
        let mut builder = self.client.post(self.endpoint.clone()).json(&body);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key.expose_secret());
        }
        Box::pin(stream::unfold(
            Upstream::Pending(Box::new(builder)),
            next_token,
        ))
    }

    fn name(&self) -> &'static str {
        "upstream"
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<reqwest::Error>>> + Send>>;

enum Upstream {
    /// Not connected yet: the request is sent on the first poll.
    Pending(Box<reqwest::RequestBuilder>),
    /// Reading server-sent events.
    Streaming(Events),
    /// Finished or failed; the connection is gone.
    Done,
}

async fn next_token(state: Upstream) -> Option<(Result<String, SourceError>, Upstream)> {
    let mut events = match state {
        Upstream::Done => return None,
        Upstream::Streaming(events) => events,
        Upstream::Pending(builder) => match connect(*builder).await {
            Ok(events) => events,
            Err(error) => return Some((Err(error), Upstream::Done)),
        },
    };
    loop {
        let event = match events.next().await? {
            Ok(event) => event,
            Err(error) => {
                let error = match error {
                    EventStreamError::Transport(error) => SourceError::Http(error),
                    other => SourceError::Malformed(other.to_string()),
                };
                return Some((Err(error), Upstream::Done));
            }
        };
        let data = event.data.trim();
        if data == "[DONE]" {
            return None;
        }
        match parse_chunk(data) {
            Ok(Some(text)) => return Some((Ok(text), Upstream::Streaming(events))),
            // Role-only or empty chunks carry no token; read on.
            Ok(None) => {}
            Err(error) => return Some((Err(error), Upstream::Done)),
        }
    }
}

async fn connect(builder: reqwest::RequestBuilder) -> Result<Events, SourceError> {
    let response = builder.send().await?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let body = body.chars().take(ERROR_BODY_LIMIT).collect();
        return Err(SourceError::Status { status, body });
    }
    Ok(Box::pin(response.bytes_stream().eventsource()))
}

/// A completion chunk's text: `choices[0].text` (completions) or
/// `choices[0].delta.content` (servers that answer in chat format).
fn parse_chunk(data: &str) -> Result<Option<String>, SourceError> {
    #[derive(Deserialize)]
    struct Chunk {
        #[serde(default)]
        choices: Vec<Choice>,
    }
    #[derive(Deserialize)]
    struct Choice {
        #[serde(default)]
        text: Option<String>,
        #[serde(default)]
        delta: Option<Delta>,
    }
    #[derive(Deserialize)]
    struct Delta {
        #[serde(default)]
        content: Option<String>,
    }
    let chunk: Chunk = serde_json::from_str(data)
        .map_err(|error| SourceError::Malformed(format!("{error} in {:?}", truncate(data, 80))))?;
    let text = chunk
        .choices
        .into_iter()
        .next()
        .and_then(|choice| choice.text.or_else(|| choice.delta.and_then(|d| d.content)));
    Ok(text.filter(|t| !t.is_empty()))
}

fn completions_endpoint(base: &Url) -> Url {
    let mut endpoint = base.clone();
    // `join` replaces the last segment unless the path ends with '/'.
    let path = format!("{}/v1/completions", base.path().trim_end_matches('/'));
    endpoint.set_path(&path);
    endpoint
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_appends_the_completions_path_to_any_base() {
        for (base, expected) in [
            ("http://h:8000", "http://h:8000/v1/completions"),
            ("http://h:8000/", "http://h:8000/v1/completions"),
            ("http://h/proxy", "http://h/proxy/v1/completions"),
            ("http://h/proxy/", "http://h/proxy/v1/completions"),
        ] {
            let base = Url::parse(base).unwrap();
            assert_eq!(completions_endpoint(&base).as_str(), expected);
        }
    }

    #[test]
    fn chunks_yield_text_from_completion_or_chat_format() {
        assert_eq!(
            parse_chunk(r#"{"choices":[{"text":" hi","index":0}]}"#).unwrap(),
            Some(" hi".into())
        );
        assert_eq!(
            parse_chunk(r#"{"choices":[{"delta":{"content":"yo"}}]}"#).unwrap(),
            Some("yo".into())
        );
        assert_eq!(
            parse_chunk(r#"{"choices":[{"text":"","finish_reason":"length"}]}"#).unwrap(),
            None
        );
        assert!(matches!(
            parse_chunk("not json"),
            Err(SourceError::Malformed(_))
        ));
    }

    #[test]
    fn debug_output_never_shows_the_api_key() {
        let upstream = OpenAiUpstream::new(
            &Url::parse("http://h").unwrap(),
            "m",
            Some(SecretString::from("sk-very-secret")),
        )
        .unwrap();
        let debug = format!("{upstream:?}");
        assert!(!debug.contains("sk-very-secret"), "{debug}");
        assert!(debug.contains("[redacted]"));
    }
}
