//! Federation presence (seed 002, next steps): every hub announces itself on
//! [`PRESENCE_SUBJECT`] at a fixed interval and listens for the others' announcements.
//! A hub not heard from for three intervals is no longer listed.
//!
//! Announcements are plain NATS messages, not events: they are not stored in the log
//! (the bridge skips them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use herald_core::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{NatsLink, PRESENCE_SUBJECT};
use crate::Inner;

/// A hub heard from on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubPresence {
    pub hub_id: String,
    /// One per running process: several instances may share a hub id (and a store).
    pub instance_id: Uuid,
    pub version: String,
    pub url: Option<String>,
    /// RFC 3339.
    pub started_at: String,
    /// The announcement's interval in seconds: the hub is considered gone after three.
    pub interval_seconds: u64,
    /// When this hub last heard the announcement (RFC 3339); set by the listener.
    #[serde(default)]
    pub last_seen: String,
}

/// The hubs heard from recently.
#[derive(Default)]
pub(crate) struct Registry {
    hubs: Mutex<HashMap<Uuid, (HubPresence, std::time::Instant)>>,
}

impl Registry {
    fn record(&self, mut presence: HubPresence) {
        presence.last_seen = Timestamp::now().to_rfc3339();
        let mut hubs = self.hubs.lock().expect("presence lock");
        hubs.insert(presence.instance_id, (presence, std::time::Instant::now()));
    }

    /// Hubs whose last announcement is within three of their intervals, by hub id.
    pub fn recent(&self) -> Vec<HubPresence> {
        let mut hubs = self.hubs.lock().expect("presence lock");
        hubs.retain(|_, (presence, seen)| {
            seen.elapsed() <= Duration::from_secs(3 * presence.interval_seconds.max(1))
        });
        let mut list: Vec<_> = hubs.values().map(|(p, _)| p.clone()).collect();
        list.sort_by(|a, b| {
            (a.hub_id.as_str(), a.instance_id).cmp(&(b.hub_id.as_str(), b.instance_id))
        });
        list
    }
}

/// Largest announcement accepted (others are ignored).
const MAX_ANNOUNCEMENT: usize = 4096;

pub(crate) async fn run(inner: Arc<Inner>, link: NatsLink, interval: Duration) {
    let me = HubPresence {
        hub_id: inner.config.hub_id.clone(),
        instance_id: inner.instance_id,
        version: env!("CARGO_PKG_VERSION").into(),
        url: link.config.public_url.clone(),
        started_at: inner.started_at.to_rfc3339(),
        interval_seconds: interval.as_secs().max(1),
        last_seen: String::new(),
    };
    let body = serde_json::to_vec(&me).expect("presence serializes");
    let listen = {
        let inner = inner.clone();
        let link = link.clone();
        async move {
            loop {
                match link.client.subscribe(PRESENCE_SUBJECT).await {
                    Ok(mut subscriber) => {
                        while let Some(message) = subscriber.next().await {
                            if message.payload.len() > MAX_ANNOUNCEMENT {
                                continue;
                            }
                            match serde_json::from_slice::<HubPresence>(&message.payload) {
                                Ok(presence) => inner.presence.record(presence),
                                Err(error) => {
                                    tracing::debug!(%error, "Ignored a malformed presence announcement.")
                                }
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "Cannot subscribe to presence announcements.")
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let announce = async {
        link.wait_connected().await;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if link.is_connected() {
                if let Err(error) = link
                    .client
                    .publish(PRESENCE_SUBJECT, body.clone().into())
                    .await
                {
                    tracing::debug!(%error, "Cannot announce presence.");
                }
            }
        }
    };
    tokio::select! {
        () = listen => {}
        () = announce => {}
        () = inner.shutdown.cancelled() => {}
    }
}
