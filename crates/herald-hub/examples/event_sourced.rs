//! Seed 003's event-sourced `Context` aggregate on the hub as a library: commands
//! produce events, a repository appends them on the version it loaded (optimistic
//! concurrency), snapshots every 10 versions, and loads from the latest snapshot.
//!
//! Run with `cargo run -p herald-hub --example event_sourced`.

use herald_core::{ExpectedVersion, Payload};
use herald_hub::aggregates::{AggregateError, DomainEvent};
use herald_hub::{Hub, HubConfig};
use herald_store::{AggregateKey, EmbeddedOptions, StoreConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The aggregate's state, rebuilt from its events.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Context {
    version: u64,
    name: String,
    description: String,
    state: String,
    /// Events made by commands and not yet appended.
    #[serde(skip)]
    uncommitted: Vec<(String, serde_json::Value)>,
}

impl Context {
    fn create(&mut self, name: &str, description: &str) -> anyhow::Result<()> {
        anyhow::ensure!(self.version == 0, "the context exists already");
        self.record(
            "context.created",
            json!({"name": name, "description": description}),
        );
        Ok(())
    }

    fn rename(&mut self, name: &str) {
        self.record("context.updated", json!({"changes": {"name": name}}));
    }

    fn record(&mut self, event_type: &str, data: serde_json::Value) {
        self.apply(event_type, &data);
        self.uncommitted.push((event_type.to_owned(), data));
    }

    fn apply(&mut self, event_type: &str, data: &serde_json::Value) {
        match event_type {
            "context.created" => {
                self.name = data["name"].as_str().unwrap_or_default().to_owned();
                self.description = data["description"].as_str().unwrap_or_default().to_owned();
                self.state = "active".into();
            }
            "context.updated" => {
                if let Some(name) = data["changes"]["name"].as_str() {
                    self.name = name.to_owned();
                }
            }
            _ => {}
        }
        self.version += 1;
    }
}

/// Loads and saves contexts through the hub's event store.
struct Repository {
    hub: Hub,
}

impl Repository {
    fn key(id: &str) -> AggregateKey {
        AggregateKey {
            tenant: None,
            aggregate_type: "context".into(),
            aggregate_id: id.into(),
        }
    }

    async fn load(&self, id: &str) -> anyhow::Result<Context> {
        let mut context = match self.hub.load_snapshot(Self::key(id)).await? {
            Some(snapshot) => serde_json::from_str(snapshot.state.get())?,
            None => Context::default(),
        };
        loop {
            let page = match self
                .hub
                .load_aggregate(Self::key(id), context.version + 1, 1000)
                .await
            {
                Ok(page) => page,
                Err(AggregateError::NotFound) => return Ok(context),
                Err(error) => return Err(error.into()),
            };
            if page.events.is_empty() {
                return Ok(context);
            }
            for event in &page.events {
                let aggregate = event.aggregate.as_deref().expect("an aggregate's event");
                let data: serde_json::Value = serde_json::from_str(event.payload.get())?;
                context.apply(&aggregate.event_type, &data);
            }
        }
    }

    /// Appends the context's new events if nobody else did meanwhile.
    async fn save(&self, id: &str, context: &mut Context) -> anyhow::Result<()> {
        let loaded_at = context.version - context.uncommitted.len() as u64;
        let events = context
            .uncommitted
            .drain(..)
            .map(|(event_type, data)| {
                Ok(DomainEvent {
                    id: None,
                    event_type,
                    payload: Payload::from_json(data.to_string())?,
                    subject: None,
                    metadata: None,
                    correlation_id: None,
                    trace: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let events = self.hub.aggregate_events(&Self::key(id), events, None)?;
        let written = self
            .hub
            .append_to_aggregate(Self::key(id), ExpectedVersion::Exactly(loaded_at), events)
            .await?;
        if written.version / 10 > loaded_at / 10 {
            let state = Payload::from_json(serde_json::to_string(context)?)?;
            self.hub
                .save_snapshot(Self::key(id), written.version, state)
                .await?;
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let location = format!("sqlite://{}", dir.path().join("herald.db").display());
    let store = StoreConfig::parse(&location)?
        .open(EmbeddedOptions::default())
        .await?;
    let hub = Hub::open(HubConfig::new("local-hub"), store).await?;
    let repository = Repository { hub: hub.clone() };

    let mut context = repository.load("c-1").await?;
    context.create("Q3 plan", "what we do next")?;
    repository.save("c-1", &mut context).await?;
    for n in 1..=11 {
        let mut context = repository.load("c-1").await?;
        context.rename(&format!("Q3 plan, take {n}"));
        repository.save("c-1", &mut context).await?;
    }

    // Two writers load the same version; the second one's save is refused.
    let mut first = repository.load("c-1").await?;
    let mut second = repository.load("c-1").await?;
    first.rename("first");
    second.rename("second");
    repository.save("c-1", &mut first).await?;
    match repository.save("c-1", &mut second).await {
        Err(error) => println!("the second writer is refused: {error}"),
        Ok(()) => anyhow::bail!("both writers were accepted"),
    }

    let context = repository.load("c-1").await?;
    println!(
        "context c-1 at version {}: {:?} ({})",
        context.version, context.name, context.state
    );
    hub.shutdown().await;
    Ok(())
}
