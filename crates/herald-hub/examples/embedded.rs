//! The hub as a library: open a store, subscribe, publish, read it back, shut down.
//!
//! Run with `cargo run -p herald-hub --example embedded`.

use herald_core::Pattern;
use herald_hub::{Hub, HubConfig, StartAt};
use herald_store::{EmbeddedOptions, StoreConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let location = format!("sqlite://{}", dir.path().join("herald.db").display());
    let store = StoreConfig::parse(&location)?
        .open(EmbeddedOptions::default())
        .await?;
    let hub = Hub::open(HubConfig::new("local-hub"), store).await?;

    // A live subscription to every project event of any hub.
    let mut projects = hub
        .subscribe(Pattern::parse("hub.*.project.*")?, StartAt::Live)
        .await?;

    for (subject, payload) in [
        (
            "hub.local-hub.project.created",
            r#"{"project_id":"123","name":"demo"}"#,
        ),
        (
            "hub.local-hub.audit.security.completed",
            r#"{"findings":0}"#,
        ),
        ("hub.local-hub.project.started", r#"{"project_id":"123"}"#),
    ] {
        let published = hub.publish(hub.new_event(subject, payload)?).await?;
        println!(
            "published seq {} {}",
            published.event.seq, published.event.subject
        );
    }

    for _ in 0..2 {
        let event = projects.next().await.expect("hub is running")?;
        println!(
            "received  seq {} {} {}",
            event.seq,
            event.subject,
            event.payload.get()
        );
    }

    // A replay from the start of the log, then live: the same stream type.
    let mut replay = hub.subscribe(Pattern::all(), StartAt::AfterSeq(0)).await?;
    let first = replay.next().await.expect("hub is running")?;
    println!("replayed  seq {} {}", first.seq, first.subject);

    drop((projects, replay));
    hub.shutdown().await;
    Ok(())
}
