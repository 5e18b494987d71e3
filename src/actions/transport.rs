//! What the API clients share about an HTTP answer: reading a bounded body, and putting a
//! failure into words.

use std::time::Duration;

/// Reads at most `limit` bytes of the answer: a misbehaving server cannot make a press hold
/// more memory than that.
pub async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok(body)
}

/// A transport failure in words: the error and its causes, cut to 300 characters, with the
/// URL left out (a Slack `response_url` is a credential). `who` names who did not answer.
pub fn describe(e: &reqwest::Error, timeout: Duration, who: &str) -> String {
    if e.is_timeout() {
        return format!("no answer from {who} within {} s", timeout.as_secs_f32());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "[url]");
    }
    text.chars().take(300).collect()
}
