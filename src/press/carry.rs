//! One granted action, carried out through Buildkite's REST API.

use crate::actions::Action;
use crate::actions::buildkite::{Buildkite, BuildkiteError, Done};
use crate::actions::token::Grant;
use serde_json::{Map, Value};

/// Calls the API `grant` names. A button signed for another organization than the one
/// configured now (the config changed since) does nothing.
pub async fn carry(
    buildkite: &Buildkite,
    org: &str,
    grant: &Grant,
    unblocker: Option<&str>,
    fields: &Map<String, Value>,
) -> Result<Done, BuildkiteError> {
    if !org.eq_ignore_ascii_case(&grant.org) {
        return Err(BuildkiteError::Refused {
            status: 0,
            message: format!(
                "the button is for organization {:?}, and actions.buildkite.org is now {:?}",
                grant.org, org
            ),
        });
    }
    let (pipeline, build) = (grant.pipeline.as_str(), grant.build);
    match grant.action {
        Action::RetryFailed => match &grant.job {
            Some(job) => buildkite.retry_job(pipeline, build, job).await,
            None => buildkite.retry_failed(pipeline, build).await,
        },
        Action::Rebuild => buildkite.rebuild(pipeline, build).await,
        Action::Unblock => {
            buildkite
                .unblock(pipeline, build, grant.job.as_deref(), unblocker, fields)
                .await
        }
        Action::Cancel => buildkite.cancel(pipeline, build).await,
    }
}
