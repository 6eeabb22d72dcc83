//! A deterministic token generator, so the worker runs anywhere with no model.
//!
//! The rule it keeps: the same prompt, seed and temperature always give the
//! same tokens, and each token costs exactly the configured delay.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use futures::stream;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{GenerateRequest, TokenSource, TokenStream};

/// Emits words from a fixed vocabulary, one per `delay`, seeded from the
/// prompt and the seed (at temperature 0, from the prompt alone: greedy
/// decoding ignores the seed).
#[derive(Debug, Clone)]
pub struct BuiltinGenerator {
    delay: Duration,
}

impl BuiltinGenerator {
    /// A generator that takes `delay` per token (a stand-in for a decode step).
    pub fn new(delay: Duration) -> Self {
        Self { delay }
    }
}

impl TokenSource for BuiltinGenerator {
    fn generate(&self, request: &GenerateRequest) -> TokenStream {
        let mut hasher = DefaultHasher::new();
        request.prompt.hash(&mut hasher);
        if request.temperature > 0.0 {
            request.seed.hash(&mut hasher);
        }
        let rng = StdRng::seed_from_u64(hasher.finish());
        let delay = self.delay;
        let max_tokens = request.max_tokens;
        Box::pin(stream::unfold(
            (rng, 0u32),
            move |(mut rng, produced)| async move {
                if produced >= max_tokens {
                    return None;
                }
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let word = VOCABULARY[rng.random_range(0..VOCABULARY.len())];
                Some((Ok(format!(" {word}")), (rng, produced.saturating_add(1))))
            },
        ))
    }

    fn name(&self) -> &'static str {
        "builtin"
    }
}

const VOCABULARY: [&str; 32] = [
    "the",
    "cancel",
    "stream",
    "token",
    "worker",
    "job",
    "stops",
    "within",
    "one",
    "step",
    "lease",
    "fenced",
    "state",
    "label",
    "moves",
    "forward",
    "quickly",
    "safely",
    "and",
    "never",
    "leaks",
    "a",
    "reservation",
    "while",
    "decoding",
    "runs",
    "on",
    "kubernetes",
    "with",
    "no",
    "model",
    ".",
];

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn request(seed: u64, temperature: f32) -> GenerateRequest {
        GenerateRequest {
            prompt: "hello world".into(),
            max_tokens: 8,
            temperature,
            seed,
        }
    }

    async fn collect(source: &BuiltinGenerator, request: &GenerateRequest) -> Vec<String> {
        source
            .generate(request)
            .map(|token| token.unwrap())
            .collect()
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn same_seed_gives_same_tokens_each_after_one_delay() {
        let source = BuiltinGenerator::new(Duration::from_millis(20));
        let start = tokio::time::Instant::now();
        let first = collect(&source, &request(7, 1.0)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(160));
        assert_eq!(first.len(), 8);
        assert_eq!(first, collect(&source, &request(7, 1.0)).await);
        assert_ne!(first, collect(&source, &request(8, 1.0)).await);
        assert_eq!(
            collect(&source, &request(1, 0.0)).await,
            collect(&source, &request(2, 0.0)).await,
            "greedy decoding ignores the seed"
        );
    }
}
