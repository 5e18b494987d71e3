//! `kitebridge deliveries`: what is queued, what was sent, what died and why; and re-sending.

use crate::config::Config;
use crate::event::{Event, VerifiedBody};
use crate::store::{Delivery, DeliveryState, RetrySelector, Schema, Store, StoreError, now_ms};
use chrono::{TimeZone, Utc};
use std::process::ExitCode;
use std::sync::Arc;

/// The configured store, as it is: the operator's commands never create or migrate one.
pub(super) fn open(
    rt: &tokio::runtime::Runtime,
    config: &Config,
) -> Result<Arc<dyn Store>, String> {
    rt.block_on(config.storage.open(Schema::Check))
        .map_err(|e| format!("{}: {e}", config.storage.shown()))
}

fn time(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

fn age(ms: i64) -> String {
    crate::event::time::format_duration(std::time::Duration::from_millis(
        (now_ms() - ms).max(0) as u64
    ))
}

fn last(d: &Delivery) -> String {
    let status = d
        .last_status
        .map(|s| format!("HTTP {s}"))
        .unwrap_or_default();
    match (&d.last_error, status.is_empty()) {
        (Some(e), true) => e.clone(),
        (Some(e), false) if e.starts_with(&status) => e.clone(),
        (Some(e), false) => format!("{status}: {e}"),
        (None, _) => status,
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("{message}");
    ExitCode::FAILURE
}

/// `deliveries list`.
pub fn list(config: &Config, state: Option<DeliveryState>, limit: usize) -> ExitCode {
    let rt = super::runtime();
    let store = match open(&rt, config) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let rows = match rt.block_on(store.list(state, limit)) {
        Ok(rows) => rows,
        Err(e) => return fail(e),
    };
    if rows.is_empty() {
        println!(
            "no deliveries{}",
            state.map(|s| format!(" in state {s}")).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    println!(
        "{:>8}  {:<7}  {:<16}  {:<20}  {:<24}  {:>8}  {:>8}  last",
        "id", "state", "destination", "route", "event", "attempts", "age"
    );
    for d in rows {
        let mut last = last(&d);
        if last.chars().count() > 60 {
            last = format!("{}…", last.chars().take(59).collect::<String>());
        }
        println!(
            "{:>8}  {:<7}  {:<16}  {:<20}  {:<24}  {:>8}  {:>8}  {last}",
            d.id,
            d.state.as_str(),
            d.destination,
            d.route,
            d.event_name,
            d.attempts,
            age(d.created_at),
        );
    }
    ExitCode::SUCCESS
}

/// `deliveries show ID`.
pub fn show(config: &Config, id: i64) -> ExitCode {
    let rt = super::runtime();
    let store = match open(&rt, config) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let (d, attempts) = match rt.block_on(store.show(id)) {
        Ok(found) => found,
        Err(StoreError::NotFound(_)) => return fail(format!("no delivery {id}")),
        Err(e) => return fail(e),
    };
    let summary = rt
        .block_on(store.event(d.event_id))
        .ok()
        .and_then(|stored| {
            let at = Utc.timestamp_millis_opt(stored.received_at).single()?;
            let event =
                Event::parse(&VerifiedBody::trusted(stored.body), Some(&stored.name), at).ok()?;
            let mut parts = vec![];
            if let Some(p) = event.pipeline_slug() {
                parts.push(format!("pipeline {p}"));
            }
            if let Some(n) = event.build_number() {
                parts.push(format!("build #{n}"));
            }
            if let Some(s) = event.state() {
                parts.push(format!("state {s}"));
            }
            Some(parts.join(", "))
        });
    println!("delivery {}", d.id);
    println!("  state        {}", d.state);
    println!(
        "  event        {} (#{}{})",
        d.event_name,
        d.event_id,
        summary
            .filter(|s| !s.is_empty())
            .map(|s| format!(": {s}"))
            .unwrap_or_default()
    );
    println!("  route        {}", d.route);
    println!("  destination  {}", d.destination);
    if let Some(t) = &d.template {
        println!("  template     {t}");
    }
    println!(
        "  accepted     {} ({} ago)",
        time(d.created_at),
        age(d.created_at)
    );
    println!("  attempts     {}", d.attempts);
    if d.state == DeliveryState::Pending {
        println!("  next attempt {}", time(d.next_attempt_at));
    }
    let last = last(&d);
    if !last.is_empty() {
        println!("  last         {last}");
    }
    if !attempts.is_empty() {
        println!("\nattempts:");
        for a in &attempts {
            let status = a
                .status
                .map(|s| format!("HTTP {s}"))
                .unwrap_or_else(|| "-".into());
            println!(
                "  {}  {:<9}  {:<8}  {:>6} ms  {}",
                time(a.at),
                a.outcome,
                status,
                a.latency_ms,
                a.reason.as_deref().unwrap_or("")
            );
        }
    }
    match &d.body {
        Some(body) => {
            let pretty = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or_else(|| body.clone());
            println!("\nbody:\n{pretty}");
        }
        None => println!("\nbody: not rendered yet"),
    }
    ExitCode::SUCCESS
}

/// `deliveries retry ID|--all-dead`.
pub fn retry(config: &Config, selector: RetrySelector) -> ExitCode {
    let rt = super::runtime();
    let store = match open(&rt, config) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    match rt.block_on(store.retry(selector, now_ms())) {
        Ok(0) => match selector {
            RetrySelector::Id(id) => fail(format!(
                "delivery {id} is not dead or pending (or does not exist)"
            )),
            RetrySelector::AllDead => {
                println!("no dead letters to retry");
                ExitCode::SUCCESS
            }
        },
        Ok(n) => {
            println!(
                "re-queued {n} deliver{}; a running kitebridge sends {} within a second",
                if n == 1 { "y" } else { "ies" },
                if n == 1 { "it" } else { "them" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `actions list`.
pub fn presses(config: &Config, limit: usize) -> ExitCode {
    let rt = super::runtime();
    let store = match open(&rt, config) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let rows = match rt.block_on(store.presses(limit)) {
        Ok(rows) => rows,
        Err(e) => return fail(e),
    };
    if rows.is_empty() {
        println!("no button presses");
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<23}  {:<12}  {:<11}  {:<32}  {:<28}  {:<7}  detail",
        "at", "action", "outcome", "target", "by", "from"
    );
    for p in rows {
        // Names and answers come from Slack, the sign-in provider and Buildkite: nothing in
        // them may steer the operator's terminal.
        let clean = crate::render::console_text;
        let by = match &p.presser_name {
            Some(name) if name != &p.presser => format!("{} ({})", clean(name), clean(&p.presser)),
            _ => clean(&p.presser),
        };
        let mut detail = clean(p.detail.as_deref().unwrap_or_default());
        if !p.route.is_empty() {
            detail = format!("route {} → {}; {detail}", p.route, p.destination);
        }
        println!(
            "{:<23}  {:<12}  {:<11}  {:<32}  {:<28}  {:<7}  {detail} [{}]",
            time(p.at),
            p.action,
            p.outcome,
            p.target,
            by,
            p.channel,
            p.source
        );
    }
    ExitCode::SUCCESS
}
