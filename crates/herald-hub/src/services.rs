//! The hub's background services, in one list.
//!
//! Every task the hub runs beside the callers' requests (the committer, the fan-out
//! follower, the NATS relay, bridge and presence, the routing rules, the cursor saver)
//! is a [`Service`] here: a name, the stage at which it stops, its task, and a state it
//! reports. [`Services::stop_all`] stops them stage by stage, in the order of [`Stage`]:
//! the committer drains what is queued first; then the tasks that follow the log, which
//! save their cursors on the way out; then the rules' consumers; then the cursor book is
//! saved once more; the live subscriptions end; and the store closes last.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::task::JoinHandle;

use crate::Inner;

/// When a service stops, in shutdown order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stage {
    /// Takes publishes: drains its queue before anything else stops.
    Intake,
    /// Follows the log (fan-out, NATS): stops next, saving its cursor.
    Followers,
    /// The routing rules' consumers, which note their cursors in the cursor book.
    Consumers,
    /// Saves the cursor book, once more after the consumers stopped.
    Savers,
    /// Ends the live subscriptions.
    Subscriptions,
    /// The store: closed last.
    Store,
}

/// How a service's task is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Awaited until it ends by itself (it watches the hub's shutdown token).
    Drain,
    /// Awaited for at most this long; left behind (with a warning) after that.
    Within(Duration),
    /// Aborted: it holds nothing worth finishing.
    Abort,
}

/// What a service is doing, as it reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceState {
    Running,
    /// Running, but its last attempt failed and it is trying again.
    Retrying {
        reason: String,
    },
    Stopping,
    Stopped,
    /// Its task panicked or did not stop in time.
    Failed {
        reason: String,
    },
}

impl std::fmt::Display for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceState::Running => f.write_str("running"),
            ServiceState::Retrying { reason } => write!(f, "retrying: {reason}"),
            ServiceState::Stopping => f.write_str("stopping"),
            ServiceState::Stopped => f.write_str("stopped"),
            ServiceState::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

/// One service's name and state (see [`Hub::services`](crate::Hub::services)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    pub name: String,
    pub state: ServiceState,
}

/// Where a service reports its state.
#[derive(Debug, Clone)]
pub(crate) struct Status(Arc<Mutex<ServiceState>>);

impl Status {
    fn new() -> Self {
        Status(Arc::new(Mutex::new(ServiceState::Running)))
    }

    fn set(&self, state: ServiceState) {
        *self.0.lock().expect("service state lock") = state;
    }

    fn get(&self) -> ServiceState {
        self.0.lock().expect("service state lock").clone()
    }

    /// Working normally (again).
    pub(crate) fn running(&self) {
        self.set(ServiceState::Running);
    }

    /// The last attempt failed for `reason`; retrying.
    pub(crate) fn retrying(&self, reason: impl std::fmt::Display) {
        self.set(ServiceState::Retrying {
            reason: reason.to_string(),
        });
    }
}

/// Work done once a service's task has ended (or for a service without a task).
pub(crate) type AfterStop = Box<dyn FnOnce(Arc<Inner>) -> BoxFuture<'static, ()> + Send>;

struct Service {
    name: String,
    stage: Stage,
    status: Status,
    task: Option<JoinHandle<()>>,
    ending: Ending,
    after_stop: Option<AfterStop>,
}

/// The hub's services (a field of the hub's `Inner`).
#[derive(Default)]
pub(crate) struct Services {
    list: Mutex<Vec<Service>>,
    /// Held through a shutdown; true once it has run.
    stopped: tokio::sync::Mutex<bool>,
}

impl Services {
    /// Starts `task` (given its status to report to) as the service `name`.
    pub(crate) fn spawn<F>(
        &self,
        name: impl Into<String>,
        stage: Stage,
        ending: Ending,
        task: impl FnOnce(Status) -> F,
    ) where
        F: Future<Output = ()> + Send + 'static,
    {
        let status = Status::new();
        let handle = tokio::spawn(task(status.clone()));
        self.push(Service {
            name: name.into(),
            stage,
            status,
            task: Some(handle),
            ending,
            after_stop: None,
        });
    }

    /// Adds a service without a task of its own: `stop` is all there is to stopping it.
    pub(crate) fn add(&self, name: impl Into<String>, stage: Stage, stop: AfterStop) {
        self.push(Service {
            name: name.into(),
            stage,
            status: Status::new(),
            task: None,
            ending: Ending::Abort,
            after_stop: Some(stop),
        });
    }

    /// Adds `then` to the stopping of the service `name` (after its task ended).
    pub(crate) fn then(&self, name: &str, then: AfterStop) {
        let mut list = self.list.lock().expect("services lock");
        if let Some(service) = list.iter_mut().find(|s| s.name == name) {
            service.after_stop = Some(then);
        }
    }

    fn push(&self, service: Service) {
        self.list.lock().expect("services lock").push(service);
    }

    /// Every service with its state, in stop order.
    pub(crate) fn list(&self) -> Vec<ServiceInfo> {
        let mut list: Vec<(Stage, ServiceInfo)> = self
            .list
            .lock()
            .expect("services lock")
            .iter()
            .map(|service| {
                let mut state = service.status.get();
                let ended = service.task.as_ref().is_some_and(JoinHandle::is_finished);
                if ended && matches!(state, ServiceState::Running | ServiceState::Retrying { .. }) {
                    state = ServiceState::Stopped;
                }
                let info = ServiceInfo {
                    name: service.name.clone(),
                    state,
                };
                (service.stage, info)
            })
            .collect();
        list.sort_by_key(|(stage, _)| *stage);
        list.into_iter().map(|(_, info)| info).collect()
    }

    /// Stops every service, stage by stage (in order of registration within a stage).
    /// The hub's shutdown token must be cancelled first. Safe to call more than once: a
    /// second call waits for the first to finish.
    pub(crate) async fn stop_all(&self, inner: &Arc<Inner>) {
        let mut stopped = self.stopped.lock().await;
        if *stopped {
            return;
        }
        let order: Vec<usize> = {
            let list = self.list.lock().expect("services lock");
            let mut order: Vec<usize> = (0..list.len()).collect();
            order.sort_by_key(|&i| list[i].stage);
            order
        };
        for index in order {
            let (name, status, task, ending, after_stop) = {
                let mut list = self.list.lock().expect("services lock");
                let service = &mut list[index];
                service.status.set(ServiceState::Stopping);
                (
                    service.name.clone(),
                    service.status.clone(),
                    service.task.take(),
                    service.ending,
                    service.after_stop.take(),
                )
            };
            let mut outcome = ServiceState::Stopped;
            if let Some(task) = task {
                outcome = end(&name, task, ending).await;
            }
            if let Some(after_stop) = after_stop {
                after_stop(inner.clone()).await;
            }
            status.set(outcome);
        }
        *stopped = true;
    }
}

/// Ends one task as `ending` says; how it went.
async fn end(name: &str, task: JoinHandle<()>, ending: Ending) -> ServiceState {
    let result = match ending {
        Ending::Abort => {
            task.abort();
            let _ = task.await;
            return ServiceState::Stopped;
        }
        Ending::Drain => task.await,
        Ending::Within(limit) => match tokio::time::timeout(limit, task).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    service = name,
                    seconds = limit.as_secs(),
                    "A service did not stop in time."
                );
                return ServiceState::Failed {
                    reason: format!("did not stop within {} s", limit.as_secs()),
                };
            }
        },
    };
    match result {
        Ok(()) => ServiceState::Stopped,
        Err(error) => {
            tracing::error!(service = name, %error, "A service's task failed.");
            ServiceState::Failed {
                reason: error.to_string(),
            }
        }
    }
}
