//! Completion tokens/s of the packaged model through tiergate's mistral.rs runtime, on the same
//! prompts, max tokens and greedy decoding as `../shared/bench/llama_cpp_baseline.py`.
//!
//! cargo run --example tokens_per_sec [-- --max-tokens 48 --rounds 3 --weights loaded|source]
//! cargo run --example tokens_per_sec -- --concurrency 1,4,8
//! cargo run --example tokens_per_sec -- --activations bf16   (what mistral.rs picks on its own)
//! CANDLE_UPSTREAM_QUANTIZED_MATMUL=1 cargo run --example tokens_per_sec   (candle's own loop)
//! CANDLE_Q4_1_REPACK=0 cargo run --example tokens_per_sec   (Q4_1 in the file layout)
//! cargo run --example tokens_per_sec -- --card model-cards/gemma3-270m.yaml --completion
//!
//! `--card` names the model card whose weights run (default: the small packaged model).
//! `--completion` sends each prompt as the completion prompt "Q: <prompt>\nA:" with no stop
//! sequence (a base model has no chat template), as `examples/llama_cpp_completion.py` does for
//! llama.cpp.
//!
//! `--weights loaded` (default) runs the file tiergate serves (the card's derived file when it
//! names one; the shipped card runs the packaged Q4_1 file); `source` runs the card's source file
//! itself; a path ending in `.gguf` runs that file. `--concurrency` measures aggregate completion
//! tokens/s with that many requests in flight at once on one loaded model (all five prompts,
//! repeated, per level).
//!
//! Runs in the dev profile on purpose: dependencies are fully optimised there (see Cargo.toml),
//! and it shares the one dependency build with `cargo run` and `cargo test`.

use std::time::Instant;

use tiergate::{
    config::Settings,
    inference::{
        ActivationDtype, DecodingProfile, LoadedPromptFormat, MistralRuntime, PromptFormat, Role, Turn, ensure_runnable_weights, ensure_weights,
    },
    registry::{ModelCard, parse_card},
};

const PROMPTS: [&str; 5] = [
    "What is the capital of France? Answer in one word.",
    "What is 17 times 23?",
    "Write a haiku about governance.",
    "Classify this support ticket intent: 'My card was charged twice for the same order'. Answer with one of: billing, shipping, technical, other.",
    "Explain in two sentences why small models are cheaper to serve than large ones.",
];

/// The value after `name` on the command line.
fn arg_value(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn arg(name: &str, default: u32) -> u32 {
    arg_value(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let max_tokens = arg("--max-tokens", 48);
    let rounds = arg("--rounds", 3);
    let card_path = arg_value("--card").unwrap_or_else(|| "model-cards/smollm2-135m-instruct.yaml".into());
    let card_text = std::fs::read_to_string(&card_path)?;
    let card: ModelCard = serde_json::from_value(parse_card(&card_text)?.document)?;
    let settings = Settings::default();
    let which = arg_value("--weights").unwrap_or_else(|| "loaded".into());
    let path = match which.as_str() {
        // Any other GGUF file, to compare candidate formats.
        other if other.ends_with(".gguf") => std::path::PathBuf::from(other),
        "source" => ensure_weights(&card.weights.source, &card.weights.sha256, &settings.model_cache_dir, &settings.python)?,
        _ => ensure_runnable_weights(&card.weights, &settings.model_cache_dir, &settings.python)?,
    };
    println!("{{\"weights\": {:?}}}", path.display().to_string());
    let load_started = Instant::now();
    let activations = match arg_value("--activations").as_deref() {
        Some("bf16") => ActivationDtype::Bf16,
        _ => ActivationDtype::F32,
    };
    println!("{{\"activations\": \"{activations:?}\"}}");
    let runtime = MistralRuntime::load_with_activations(&path, activations).await?;
    let load_s = load_started.elapsed().as_secs_f64();
    let prompt_format = std::env::args().any(|a| a == "--completion").then(|| {
        let format = PromptFormat { template: "{{conversation}}".into(), user_prefix: "Q: ".into(), assistant_prefix: "A:".into(), stop: Vec::new() };
        std::sync::Arc::new(LoadedPromptFormat::new(format))
    });
    let decoding = DecodingProfile { max_tokens, temperature: 0.0, system_prompt: None, prompt_format, top_logprobs: 0 };
    let turn = |text: &str| vec![Turn { role: Role::User, content: text.to_owned() }];
    runtime.generate(&turn("hi"), &DecodingProfile { max_tokens: 4, ..decoding.clone() }).await?; // warm-up

    if let Some(levels) = arg_value("--concurrency") {
        for level in levels.split(',').filter_map(|l| l.parse::<usize>().ok()) {
            let started = Instant::now();
            let requests = (0..level.max(PROMPTS.len()) * 2).map(|i| {
                let (runtime, decoding) = (runtime.clone(), decoding.clone());
                async move { runtime.generate(&turn(PROMPTS[i % PROMPTS.len()]), &decoding).await }
            });
            // `level` in flight at a time, over at least two rounds of the prompts.
            use futures::StreamExt;
            let generations: Vec<_> = futures::stream::iter(requests).buffer_unordered(level).collect().await;
            let seconds = started.elapsed().as_secs_f64();
            let mut tokens = 0;
            for generation in generations {
                tokens += generation?.completion_tokens;
            }
            println!(
                "{{\"concurrency\": {level}, \"requests\": {}, \"completion_tokens\": {tokens}, \"seconds\": {seconds:.3}, \"completion_tok_per_s\": {:.1}}}",
                level.max(PROMPTS.len()) * 2,
                tokens as f64 / seconds
            );
        }
        return Ok(());
    }

    let mut round_rates = Vec::new();
    for round in 0..rounds {
        let (mut tokens, mut seconds) = (0u64, 0f64);
        for prompt in PROMPTS {
            let started = Instant::now();
            let generation = runtime.generate(&turn(prompt), &decoding).await?;
            let elapsed = started.elapsed().as_secs_f64();
            tokens += generation.completion_tokens;
            seconds += elapsed;
            if round == 0 {
                println!(
                    "{{\"prompt\": {:?}, \"prompt_tokens\": {}, \"completion_tokens\": {}, \"seconds\": {:.4}, \"completion_tok_per_s\": {:.1}}}",
                    &prompt[..40.min(prompt.len())],
                    generation.prompt_tokens,
                    generation.completion_tokens,
                    elapsed,
                    generation.completion_tokens as f64 / elapsed
                );
            }
        }
        round_rates.push(tokens as f64 / seconds);
        println!(
            "{{\"round\": {round}, \"completion_tokens\": {tokens}, \"seconds\": {seconds:.3}, \"completion_tok_per_s\": {:.1}}}",
            tokens as f64 / seconds
        );
    }
    round_rates.sort_by(f64::total_cmp);
    println!(
        "{{\"summary\": true, \"load_s\": {load_s:.3}, \"max_tokens\": {max_tokens}, \"rounds\": {rounds}, \"median_completion_tok_per_s\": {:.1}}}",
        round_rates[round_rates.len() / 2]
    );
    Ok(())
}
