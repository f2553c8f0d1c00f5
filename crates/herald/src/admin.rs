//! `herald rules …`, `herald tenants …` and the HTTP half of `herald keys …`: a running
//! hub's routing rules, tenants and API keys, over its HTTP API. Like `herald consumer`,
//! answers are printed as JSON on stdout; a refusal prints the hub's error code and
//! message on stderr and exits non-zero.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::{print, Answer, Connection, Resource};

const RULES: &[&str] = &["api", "rules"];
const TENANTS: &[&str] = &["api", "tenants"];
const KEYS: &[&str] = &["api", "keys"];

#[derive(Debug, Args)]
pub struct RulesArgs {
    #[command(subcommand)]
    command: RulesCommand,
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// List the routing rules with their stats.
    List(Connection),
    /// Print one rule with its stats.
    Get(IdArgs),
    /// Create a rule from its JSON body (as `POST /api/rules` takes it).
    Create(BodyArgs),
    /// Delete a rule.
    Delete(IdArgs),
    /// List a rule's dead letters.
    DeadLetters(IdArgs),
    /// Send a rule's dead letters back for delivery (all of them when no seq is given).
    Redrive(RedriveArgs),
}

#[derive(Debug, Args)]
pub struct TenantsArgs {
    #[command(subcommand)]
    command: TenantsCommand,
}

#[derive(Debug, Subcommand)]
enum TenantsCommand {
    /// List the tenants (admin key).
    List(Connection),
    /// Print one tenant.
    Get(IdArgs),
    /// Create a tenant from its JSON body (as `POST /api/tenants` takes it).
    Create(BodyArgs),
    /// Delete a tenant.
    Delete(IdArgs),
}

/// The commands of `herald keys` that go through a running hub.
#[derive(Debug, Subcommand)]
pub enum KeysHttpCommand {
    /// List the API keys of a running hub: ids, tenants, rights, never secrets.
    List(Connection),
    /// Create a key through a running hub from its JSON body (as `POST /api/keys` takes
    /// it); the secret is printed this once.
    Add(BodyArgs),
    /// Revoke a key at once.
    Revoke(IdArgs),
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// The id.
    id: String,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
pub struct BodyArgs {
    /// The JSON body: the text itself, `@FILE`, or `-` for standard input.
    body: String,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
pub struct RedriveArgs {
    /// The rule's id.
    id: String,
    /// A dead letter's seq; repeat for more. None: every dead letter of the rule.
    #[arg(long = "seq")]
    seqs: Vec<u64>,
    #[command(flatten)]
    connection: Connection,
}

pub async fn rules(args: RulesArgs) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    let answer = match args.command {
        RulesCommand::List(connection) => {
            Resource::new(&connection, RULES)?
                .call(Method::GET, &[], None)
                .await?
        }
        RulesCommand::Get(id) => get(&id, RULES).await?,
        RulesCommand::Create(body) => create(&body, RULES).await?,
        RulesCommand::Delete(id) => delete(&id, RULES).await?,
        RulesCommand::DeadLetters(id) => {
            Resource::new(&id.connection, RULES)?
                .call(Method::GET, &[&id.id, "dead-letters"], None)
                .await?
        }
        RulesCommand::Redrive(args) => {
            let body = if args.seqs.is_empty() {
                json!({})
            } else {
                json!({ "seqs": args.seqs })
            };
            Resource::new(&args.connection, RULES)?
                .call(
                    Method::POST,
                    &[&args.id, "dead-letters", "redrive"],
                    Some(&body),
                )
                .await?
        }
    };
    Ok(print(answer))
}

pub async fn tenants(args: TenantsArgs) -> anyhow::Result<ExitCode> {
    let answer = match args.command {
        TenantsCommand::List(connection) => {
            Resource::new(&connection, TENANTS)?
                .call(reqwest::Method::GET, &[], None)
                .await?
        }
        TenantsCommand::Get(id) => get(&id, TENANTS).await?,
        TenantsCommand::Create(body) => create(&body, TENANTS).await?,
        TenantsCommand::Delete(id) => delete(&id, TENANTS).await?,
    };
    Ok(print(answer))
}

pub async fn keys(command: KeysHttpCommand) -> anyhow::Result<ExitCode> {
    let answer = match command {
        KeysHttpCommand::List(connection) => {
            Resource::new(&connection, KEYS)?
                .call(reqwest::Method::GET, &[], None)
                .await?
        }
        KeysHttpCommand::Add(body) => create(&body, KEYS).await?,
        KeysHttpCommand::Revoke(id) => delete(&id, KEYS).await?,
    };
    Ok(print(answer))
}

async fn get(id: &IdArgs, collection: &'static [&'static str]) -> anyhow::Result<Answer> {
    Resource::new(&id.connection, collection)?
        .call(reqwest::Method::GET, &[&id.id], None)
        .await
}

async fn delete(id: &IdArgs, collection: &'static [&'static str]) -> anyhow::Result<Answer> {
    Resource::new(&id.connection, collection)?
        .call(reqwest::Method::DELETE, &[&id.id], None)
        .await
}

async fn create(body: &BodyArgs, collection: &'static [&'static str]) -> anyhow::Result<Answer> {
    let value = read_body(&body.body)?;
    Resource::new(&body.connection, collection)?
        .call(reqwest::Method::POST, &[], Some(&value))
        .await
}

/// The JSON of a body argument: the text itself, `@FILE`, or `-` for standard input.
fn read_body(argument: &str) -> anyhow::Result<Value> {
    let text = if argument == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the body from standard input")?;
        text
    } else if let Some(path) = argument.strip_prefix('@') {
        std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
    } else {
        argument.to_owned()
    };
    serde_json::from_str(&text).context("the body is not JSON")
}
