//! Black-box integration tests of the `herald` binary: each test starts the real
//! server (`herald serve`) on a loopback port with a private data directory and talks to
//! it only through its wire contract (HTTP, WebSocket, signals, the CLI).

mod harness;

mod access;
mod access_fuzz;
mod aggregates;
mod api;
mod backup;
mod bad_input;
mod cli;
mod config;
#[cfg(feature = "console")]
mod console;
mod consumer_cli;
mod consumers;
mod crash;
mod hardening;
mod lifecycle;
mod nats;
mod otel;
mod postgres;
mod retention;
mod rules;
mod schemas;
mod stream;
mod tls;
mod transfer;
