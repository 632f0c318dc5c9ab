//! Prints a namespace's task queue depth every 100 ms as CSV (`seconds,ready,consumers`), until
//! killed: what `scripts/window-depth.sh` plots and `scripts/load.py` records.
//! `cargo run --example queue_depth -- URL NS`; with a third argument `delete`, deletes the
//! namespace's queues and exchanges instead (the scripts' clean-up).

use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(ns)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: queue_depth AMQP_URL NAMESPACE [delete]");
    };
    let delete = args.next().as_deref() == Some("delete");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let broker = vpd::broker::Broker::connect_one(&url, "vpd-queue-depth").await?;
        let topology = vpd::broker::Topology::new(ns);
        if delete {
            return broker.delete(&topology).await;
        }
        let queue = topology.tasks();
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        println!("seconds,ready,consumers");
        loop {
            tick.tick().await;
            if let Ok((ready, consumers)) = broker.queue_stats(&queue).await {
                println!("{:.2},{ready},{consumers}", start.elapsed().as_secs_f64());
            }
        }
    })
}
