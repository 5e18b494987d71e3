//! A small client for the Buildkite REST API: the five things a button can ask for (retry a
//! job, retry every failed job, rebuild, unblock, cancel).
//!
//! The one rule that shapes it: a write must never happen twice. Buildkite's writes are
//! `PUT`s that are not idempotent in effect (two rebuilds are two new builds), so a `PUT` is
//! retried only after a `429`, which says nothing was done. A `5xx`, a timeout or a dropped
//! connection after a `PUT` is reported as [`BuildkiteError::Unavailable`] ("it may or may
//! not have happened") for the person to look at, never sent again. Reads (`GET`) are retried
//! on those failures, with a short backoff.

use crate::secret::Secret;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde_json::{Map, Value};
use std::time::Duration;

/// How long one request may take, from connecting to the end of the answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The wait after a `429` that names no time.
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(1);

/// The longest single wait after a `429`: a person is looking at a button.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(10);

/// The most time spent waiting out `429`s for one call, after which it is given up.
const RATE_LIMIT_BUDGET: Duration = Duration::from_secs(20);

/// The pauses before the second and third try of a `GET` that failed in transit or got a `5xx`.
const GET_BACKOFF: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(800)];

/// The most of an answer read; a build with hundreds of jobs is a few hundred KiB.
const ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// The answers to a write that say Buildkite did nothing: a bad request, no access, no such
/// build or job, or "cannot be done" (422). Only these give a button back to be pressed again.
const SURE_REFUSALS: [u16; 5] = [400, 401, 403, 404, 422];

/// Job states that a "retry failed jobs" press retries.
const RETRIABLE_STATES: [&str; 2] = ["failed", "timed_out"];

/// A Buildkite REST API client for one organization.
#[derive(Debug, Clone)]
pub struct Buildkite {
    client: reqwest::Client,
    api_url: String,
    org: String,
    token: Secret,
    timeout: Duration,
}

/// What Buildkite did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// The HTTP status of the answer to the write.
    pub status: u16,
    /// A short text for people: "retried 2 failed jobs", "rebuilt as #1843".
    pub summary: String,
    /// Where to see the result (the new build, the retried job), when Buildkite said.
    pub web_url: Option<String>,
}

/// Why a call did not (certainly) do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildkiteError {
    /// Buildkite answered 4xx (not 429), or the request could not be made at all (`status` 0,
    /// for an argument that cannot go in a URL): nothing was done. `message` is Buildkite's
    /// `message` field (e.g. "Job not retriable") or the status text.
    #[error("Buildkite refused ({status}): {message}")]
    Refused {
        /// The HTTP status, or 0 when nothing was sent.
        status: u16,
        /// Why, in Buildkite's words where it gave them.
        message: String,
    },
    /// No usable answer (a 5xx, a timeout, a connection error, or rate limiting beyond the
    /// wait budget): the action may or may not have happened.
    #[error("Buildkite unavailable: {0}")]
    Unavailable(String),
}

impl Buildkite {
    /// A client for organization `org` at `api_url` (e.g. `https://api.buildkite.com/v2`; a
    /// trailing slash is dropped). `client` should come from [`crate::destination::client`].
    pub fn new(client: reqwest::Client, api_url: &str, org: &str, token: Secret) -> Self {
        Self {
            client,
            api_url: api_url.trim_end_matches('/').to_string(),
            org: org.to_string(),
            token,
            timeout: TIMEOUT,
        }
    }

    /// The same client with another per-request timeout (10 s unless set).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Retries one job: `PUT …/builds/{build}/jobs/{job}/retry`.
    pub async fn retry_job(
        &self,
        pipeline: &str,
        build: u64,
        job: &str,
    ) -> Result<Done, BuildkiteError> {
        let path = self.job_path(pipeline, build, job, "retry")?;
        let (status, answer) = self.call(Write::Put(Vec::new()), &path).await?;
        let what = job_label(&answer).unwrap_or_else(|| format!("job {job}"));
        Ok(Done {
            status,
            summary: format!("retried {what}"),
            web_url: text(&answer, "web_url"),
        })
    }

    /// Reads the build, then retries every job that failed or timed out and has not been
    /// retried already. Refused when there is none; when some retries fail and others work,
    /// the summary says how many of each.
    pub async fn retry_failed(&self, pipeline: &str, build: u64) -> Result<Done, BuildkiteError> {
        let details = self.build(pipeline, build).await?;
        let failed = retriable_jobs(&details);
        if failed.is_empty() {
            return Err(BuildkiteError::Refused {
                status: 0,
                message: format!("build #{build} has no failed jobs to retry"),
            });
        }
        let mut retried = 0usize;
        let mut last_status = 0;
        let mut first_error: Option<BuildkiteError> = None;
        let mut unavailable: Option<BuildkiteError> = None;
        for job in &failed {
            match self.retry_job(pipeline, build, job).await {
                Ok(done) => {
                    retried += 1;
                    last_status = done.status;
                }
                Err(e) => {
                    if matches!(e, BuildkiteError::Unavailable(_)) && unavailable.is_none() {
                        unavailable = Some(e.clone());
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        if retried == 0 {
            // "Unavailable" wins: one of the retries may have happened after all.
            return Err(unavailable
                .or(first_error)
                .unwrap_or_else(|| BuildkiteError::Unavailable("no retry was answered".into())));
        }
        let mut summary = format!("retried {}", plural(retried, "failed job"));
        if let Some(e) = first_error {
            summary.push_str(&format!(
                " ({} not: {})",
                failed.len() - retried,
                short_reason(&e)
            ));
        }
        Ok(Done {
            status: last_status,
            summary,
            web_url: text(&details, "web_url"),
        })
    }

    /// Rebuilds: `PUT …/builds/{build}/rebuild`; the summary and URL name the new build.
    pub async fn rebuild(&self, pipeline: &str, build: u64) -> Result<Done, BuildkiteError> {
        let path = self.build_path(pipeline, build, Some("rebuild"))?;
        let (status, answer) = self.call(Write::Put(Vec::new()), &path).await?;
        let summary = match answer.get("number").and_then(Value::as_u64) {
            Some(n) => format!("rebuilt as #{n}"),
            None => format!("rebuilt #{build}"),
        };
        Ok(Done {
            status,
            summary,
            web_url: text(&answer, "web_url"),
        })
    }

    /// Unblocks a block step: `PUT …/builds/{build}/jobs/{job}/unblock` with
    /// `{"unblocker": …, "fields": …}` (`unblocker` is a Buildkite user UUID, left out when
    /// `None`). Without `job`, reads the build and takes its first blocked manual job (Buildkite
    /// stops at one block step at a time, so there is normally exactly one); refused if none.
    pub async fn unblock(
        &self,
        pipeline: &str,
        build: u64,
        job: Option<&str>,
        unblocker: Option<&str>,
        fields: &Map<String, Value>,
    ) -> Result<Done, BuildkiteError> {
        let job = match job {
            Some(job) => job.to_string(),
            None => {
                let details = self.build(pipeline, build).await?;
                blocked_job(&details).ok_or_else(|| BuildkiteError::Refused {
                    status: 0,
                    message: format!("build #{build} is not waiting on a block step"),
                })?
            }
        };
        let path = self.job_path(pipeline, build, &job, "unblock")?;
        let mut body = Map::new();
        if let Some(who) = unblocker {
            body.insert("unblocker".into(), Value::String(who.to_string()));
        }
        body.insert("fields".into(), Value::Object(fields.clone()));
        let body =
            serde_json::to_vec(&Value::Object(body)).map_err(|e| BuildkiteError::Refused {
                status: 0,
                message: format!("the unblock fields cannot be sent: {e}"),
            })?;
        let (status, answer) = self.call(Write::Put(body), &path).await?;
        let summary = match job_label(&answer) {
            Some(label) => format!("unblocked {label}"),
            None => format!("unblocked build #{build}"),
        };
        Ok(Done {
            status,
            summary,
            web_url: text(&answer, "web_url"),
        })
    }

    /// Cancels a build: `PUT …/builds/{build}/cancel`.
    pub async fn cancel(&self, pipeline: &str, build: u64) -> Result<Done, BuildkiteError> {
        let path = self.build_path(pipeline, build, Some("cancel"))?;
        let (status, answer) = self.call(Write::Put(Vec::new()), &path).await?;
        Ok(Done {
            status,
            summary: format!("canceled build #{build}"),
            web_url: text(&answer, "web_url"),
        })
    }

    /// `GET …/builds/{build}`: the build with its (latest) jobs.
    async fn build(&self, pipeline: &str, build: u64) -> Result<Value, BuildkiteError> {
        let path = self.build_path(pipeline, build, None)?;
        Ok(self.call(Write::Get, &path).await?.1)
    }

    fn build_path(
        &self,
        pipeline: &str,
        build: u64,
        action: Option<&str>,
    ) -> Result<String, BuildkiteError> {
        let mut path = format!(
            "/organizations/{}/pipelines/{}/builds/{build}",
            segment(&self.org, "organization")?,
            segment(pipeline, "pipeline")?
        );
        if let Some(action) = action {
            path.push('/');
            path.push_str(action);
        }
        Ok(path)
    }

    fn job_path(
        &self,
        pipeline: &str,
        build: u64,
        job: &str,
        action: &str,
    ) -> Result<String, BuildkiteError> {
        Ok(format!(
            "{}/jobs/{}/{action}",
            self.build_path(pipeline, build, None)?,
            segment(job, "job")?
        ))
    }

    /// Sends one call, waiting out `429`s and retrying `GET`s; see the module comment for why
    /// a `PUT` is never sent twice unless Buildkite said it did nothing.
    async fn call(&self, write: Write, path: &str) -> Result<(u16, Value), BuildkiteError> {
        let url = format!("{}{path}", self.api_url);
        let mut waited = Duration::ZERO;
        let mut failures = 0usize;
        loop {
            let mut request = match &write {
                Write::Get => self.client.get(&url),
                Write::Put(body) => self
                    .client
                    .put(&url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone()),
            };
            request = request
                .bearer_auth(self.token.expose())
                .header(ACCEPT, "application/json")
                .timeout(self.timeout);
            let transient = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if status == 429 {
                        let wait = rate_limit_wait(response.headers());
                        if waited + wait > RATE_LIMIT_BUDGET {
                            return Err(BuildkiteError::Unavailable(format!(
                                "rate limited by Buildkite for more than {} s",
                                RATE_LIMIT_BUDGET.as_secs()
                            )));
                        }
                        tracing::debug!(?wait, path, "Buildkite rate limit; waiting");
                        tokio::time::sleep(wait).await;
                        waited += wait;
                        continue;
                    }
                    match super::transport::read_capped(response, ANSWER_BYTES).await {
                        Ok(body) if (200..300).contains(&status) => {
                            // A write that was answered 2xx happened, even if the answer cannot
                            // be read: give back what there is rather than an error.
                            let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            return Ok((status, value));
                        }
                        Ok(body)
                            if status < 500
                                && (!write.is_put() || SURE_REFUSALS.contains(&status)) =>
                        {
                            return Err(BuildkiteError::Refused {
                                status,
                                message: refusal_message(status, &body),
                            });
                        }
                        // Any other answer to a write (a proxy's 408 or 409, a 5xx) does not say
                        // nothing was done.
                        Ok(_) => format!("Buildkite answered {status}"),
                        Err(e) if (200..300).contains(&status) && write.is_put() => {
                            tracing::warn!(status, path, "Buildkite's answer was cut off: {e}");
                            return Ok((status, Value::Null));
                        }
                        Err(e) => describe(&e, self.timeout),
                    }
                }
                Err(e) => describe(&e, self.timeout),
            };
            if write.is_put() || failures >= GET_BACKOFF.len() {
                return Err(BuildkiteError::Unavailable(transient));
            }
            tracing::debug!(path, "Buildkite read failed ({transient}); trying again");
            tokio::time::sleep(GET_BACKOFF[failures]).await;
            failures += 1;
        }
    }
}

/// The method of a call, with the body of a write.
enum Write {
    Get,
    Put(Vec<u8>),
}

impl Write {
    fn is_put(&self) -> bool {
        matches!(self, Write::Put(_))
    }
}

/// `value` as one URL path segment. Slugs and job ids are `[a-z0-9-]`; anything outside
/// `[A-Za-z0-9._-]` (or `.`/`..`, which would walk the path) is refused rather than encoded,
/// so an odd value cannot reach some other API path. Everything allowed is unreserved in a
/// URL, so no percent-encoding is needed.
fn segment<'a>(value: &'a str, what: &str) -> Result<&'a str, BuildkiteError> {
    let fine = !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if fine {
        Ok(value)
    } else {
        Err(BuildkiteError::Refused {
            status: 0,
            message: format!("{what} {value:?} is not a Buildkite identifier"),
        })
    }
}

/// How long to wait after a `429`: `Retry-After` (seconds or a date), else `RateLimit-Reset`
/// (seconds until the limit resets), else a second; never more than the per-wait cap.
fn rate_limit_wait(headers: &HeaderMap) -> Duration {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let retry_after = header(RETRY_AFTER.as_str()).and_then(|v| {
        v.parse::<u64>().map(Duration::from_secs).ok().or_else(|| {
            let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
            Some(
                (when.with_timezone(&chrono::Utc) - chrono::Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO),
            )
        })
    });
    let reset = || {
        header("ratelimit-reset")
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs)
    };
    retry_after
        .or_else(reset)
        .unwrap_or(DEFAULT_RATE_LIMIT_WAIT)
        .min(MAX_RATE_LIMIT_WAIT)
}

/// Buildkite's `message` from an error answer, else the status text.
fn refusal_message(status: u16, body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| text(&v, "message"))
        .map(|m| m.chars().take(300).collect())
        .unwrap_or_else(|| {
            reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("refused")
                .to_string()
        })
}

/// A transport failure in words.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    super::transport::describe(e, timeout, "Buildkite")
}

/// The ids of the jobs a "retry failed" press retries.
fn retriable_jobs(build: &Value) -> Vec<String> {
    jobs(build)
        .filter(|job| {
            let state = job.get("state").and_then(Value::as_str).unwrap_or("");
            RETRIABLE_STATES.contains(&state)
                && !job.get("retried").and_then(Value::as_bool).unwrap_or(false)
        })
        .filter_map(|job| text(job, "id"))
        .collect()
}

/// The id of the first manual job waiting to be unblocked.
fn blocked_job(build: &Value) -> Option<String> {
    jobs(build)
        .find(|job| {
            job.get("type").and_then(Value::as_str) == Some("manual")
                && job.get("state").and_then(Value::as_str) == Some("blocked")
        })
        .and_then(|job| text(job, "id"))
}

fn jobs(build: &Value) -> impl Iterator<Item = &Value> {
    build
        .get("jobs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// A job's name for people: its label or name, quoted.
fn job_label(job: &Value) -> Option<String> {
    text(job, "label")
        .or_else(|| text(job, "name"))
        .map(|l| format!("\u{201c}{l}\u{201d}"))
}

/// A non-empty string field.
fn text(value: &Value, key: &str) -> Option<String> {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn plural(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

fn short_reason(e: &BuildkiteError) -> String {
    match e {
        BuildkiteError::Refused { message, .. } => message.clone(),
        BuildkiteError::Unavailable(why) => why.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use serde_json::json;

    fn client() -> Buildkite {
        Buildkite::new(
            crate::destination::client(),
            "https://api.buildkite.com/v2/",
            "acme",
            Secret::new("bkua_test_token_1234"),
        )
    }

    #[test]
    fn paths_are_built_from_checked_segments() {
        let bk = client();
        assert_eq!(bk.api_url, "https://api.buildkite.com/v2");
        assert_eq!(
            bk.build_path("web-app", 1842, Some("rebuild")).unwrap(),
            "/organizations/acme/pipelines/web-app/builds/1842/rebuild"
        );
        assert_eq!(
            bk.job_path("web-app", 7, "0190-ab_c.d", "retry").unwrap(),
            "/organizations/acme/pipelines/web-app/builds/7/jobs/0190-ab_c.d/retry"
        );
        for bad in ["", ".", "..", "a/b", "a b", "x%2F", "é", "a?b", "a#b"] {
            match bk.job_path("web-app", 7, bad, "retry") {
                Err(BuildkiteError::Refused { status: 0, message }) => {
                    assert!(message.contains("job"), "{message}")
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
            assert!(bk.build_path(bad, 7, None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_token_never_shows() {
        let text = format!("{:?}", client());
        assert!(!text.contains("bkua_test_token_1234"), "{text}");
    }

    #[test]
    fn rate_limit_waits_follow_the_headers_with_a_cap() {
        let mut h = HeaderMap::new();
        assert_eq!(rate_limit_wait(&h), Duration::from_secs(1));
        h.insert("ratelimit-reset", HeaderValue::from_static("4"));
        assert_eq!(rate_limit_wait(&h), Duration::from_secs(4));
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(
            rate_limit_wait(&h),
            Duration::from_secs(2),
            "Retry-After first"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("3600"));
        assert_eq!(rate_limit_wait(&h), MAX_RATE_LIMIT_WAIT);
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Tue, 01 Jan 2019 00:00:00 GMT"),
        );
        assert_eq!(rate_limit_wait(&h), Duration::ZERO, "a past date: go now");
    }

    #[test]
    fn failed_and_timed_out_jobs_not_yet_retried_are_retried() {
        let build = json!({"jobs": [
            {"id": "a", "type": "script", "state": "failed", "retried": false},
            {"id": "b", "type": "script", "state": "passed"},
            {"id": "c", "type": "script", "state": "timed_out"},
            {"id": "d", "type": "script", "state": "failed", "retried": true},
            {"id": "e", "type": "manual", "state": "blocked"},
            {"type": "script", "state": "failed"},
        ]});
        assert_eq!(retriable_jobs(&build), ["a", "c"]);
        assert_eq!(blocked_job(&build).as_deref(), Some("e"));
        assert_eq!(blocked_job(&json!({"jobs": []})), None);
        assert!(retriable_jobs(&json!({})).is_empty());
    }

    #[test]
    fn refusals_carry_buildkite_s_message_or_the_status_text() {
        assert_eq!(
            refusal_message(422, br#"{"message":"Job not retriable"}"#),
            "Job not retriable"
        );
        assert_eq!(refusal_message(404, b"<html>"), "Not Found");
        assert_eq!(refusal_message(499, b""), "refused");
    }

    #[test]
    fn summaries_read_well() {
        assert_eq!(plural(1, "failed job"), "1 failed job");
        assert_eq!(plural(2, "failed job"), "2 failed jobs");
        assert_eq!(
            job_label(&json!({"label": "Deploy?", "name": "x"})).as_deref(),
            Some("\u{201c}Deploy?\u{201d}")
        );
        assert_eq!(job_label(&json!({"label": ""})), None);
    }
}
