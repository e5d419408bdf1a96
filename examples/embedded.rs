//! Embedding rebound in your own program with your own handler.
//!
//! ```sh
//! rebound topics apply --topic orders --tiers 10s,1m --create-main
//! cargo run --example embedded -- 127.0.0.1:9092 orders
//! ```
//!
//! Orders whose JSON does not parse are permanent failures (straight to `orders.dlq`); orders
//! the pretend payment gateway declines with "try later" are transient (retried through the
//! tiers); everything else succeeds. Ctrl-C stops it gracefully.

use std::sync::Arc;
use std::time::Duration;

use rebound::handler::Failure;
use rebound::{Config, Handler, Message, Outcome, Service, Topology};

struct Orders;

#[async_trait::async_trait]
impl Handler for Orders {
    async fn handle(&self, m: &Message) -> Outcome {
        let order: serde_json::Value = match serde_json::from_slice(m.payload()) {
            Ok(v) => v,
            Err(e) => return Outcome::permanent("bad_json", e.to_string()),
        };
        if order.get("amount_cents").and_then(|a| a.as_u64()).is_none() {
            return Outcome::permanent("no_amount", "an order needs amount_cents");
        }
        if order.get("gateway_busy") == Some(&serde_json::Value::Bool(true)) && m.attempt < 2 {
            // Ask for at least 15 s: rebound picks the first tier that covers it.
            let mut f = Failure::new(
                "gateway_busy",
                "the payment gateway asked us to come back later",
            );
            f.retry_after = Some(Duration::from_secs(15));
            return Outcome::Transient(f);
        }
        Outcome::Success
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let mut args = std::env::args().skip(1);
    let brokers = args.next().unwrap_or_else(|| "127.0.0.1:9092".into());
    let topic = args.next().unwrap_or_else(|| "orders".into());

    let mut topology = Topology::new(&topic, &[Duration::from_secs(10), Duration::from_secs(60)]);
    topology.max_retries = 4; // 10s, 1m, 1m, 1m
    topology.max_age = Some(Duration::from_secs(3600));
    let mut config = Config::new(&brokers, &format!("{topic}-embedded"), topology);
    config.metrics_addr = Some("127.0.0.1:9464".parse()?);
    config.max_in_flight = 16;

    // Ctrl-C stops gracefully: in-flight work finishes or is handed back, offsets are committed.
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    Service::new(config, Arc::new(Orders)).run(stop).await?;
    Ok(())
}
