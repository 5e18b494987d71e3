//! Integration tests: the real service on 127.0.0.1, a recording server for Slack and Teams,
//! and the real binary for the command line.

mod action_clients;
mod actions;
mod alerts;
mod answers;
mod balancer;
mod cli;
mod crash;
mod delivery;
mod fake_buildkite;
mod fake_oidc;
mod fake_slack;
mod helpers;
mod hostile;
mod hostile_requests;
mod operations;
mod pg;
mod pg_outage;
mod postgres;
mod production;
mod queue;
mod recipes;
mod replicas;
mod restarts;
mod secrets;
mod storage_faults;
mod store_contract;
mod store_copy;
mod studio;
mod studio_browser;
mod webhooks;
