//! The floor for measuring the gateway's own overhead: a bare actix-web handler that answers
//! every OpenAI chat completion with the same short completion, with token logprobs and usage,
//! in microseconds. Put behind a system card's remote tier, the load that reaches it through
//! tiergate and the same load sent to it directly differ only by what tiergate does.
//!
//! cargo run --example fixed_completion -- --bind 127.0.0.1:9100
//! (then see examples/gateway_overhead.sh)

use actix_web::{App, HttpResponse, HttpServer, web};

const ANSWER: &str = r#"{"id":"chatcmpl-fixed","object":"chat.completion","created":1765152000,"model":"fixed","choices":[{"index":0,"message":{"role":"assistant","content":"Reset it from the sign-in page."},"finish_reason":"stop","logprobs":{"content":[{"token":"Reset","logprob":-0.21,"top_logprobs":[{"token":"Reset","logprob":-0.21},{"token":"You","logprob":-1.9}]},{"token":" it","logprob":-0.05,"top_logprobs":[{"token":" it","logprob":-0.05},{"token":" your","logprob":-3.1}]},{"token":" from","logprob":-0.3,"top_logprobs":[{"token":" from","logprob":-0.3},{"token":" on","logprob":-1.6}]},{"token":" the","logprob":-0.02,"top_logprobs":[{"token":" the","logprob":-0.02},{"token":" a","logprob":-4.2}]},{"token":" sign-in","logprob":-0.4,"top_logprobs":[{"token":" sign-in","logprob":-0.4},{"token":" login","logprob":-1.2}]},{"token":" page","logprob":-0.1,"top_logprobs":[{"token":" page","logprob":-0.1},{"token":" screen","logprob":-2.5}]},{"token":".","logprob":-0.01,"top_logprobs":[{"token":".","logprob":-0.01},{"token":"!","logprob":-5.0}]}]}}],"usage":{"prompt_tokens":24,"completion_tokens":7,"total_tokens":31}}"#;

async fn complete(_body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(ANSWER)
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let bind = args.iter().position(|a| a == "--bind").and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| "127.0.0.1:9100".into());
    println!("fixed completion on http://{bind}/v1/chat/completions");
    HttpServer::new(|| App::new().route("/v1/chat/completions", web::post().to(complete))).bind(bind)?.run().await
}
