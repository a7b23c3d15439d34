//! Waiting on a condition, for tests of a running cluster: poll until it holds or a deadline
//! passes, never a fixed sleep.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`until`] polls.
pub const POLL: Duration = Duration::from_millis(300);

/// Any error a check's request may return.
pub type BoxError = Box<dyn std::error::Error>;

/// Polls `check` every [`POLL`] until it returns `Ok(Ok(value))`, and returns that value; after
/// `within`, fails naming `what` and the last observation. A check that fails (`Err`, say a
/// connection the API server dropped under load) is an observation too, retried until the
/// deadline: it must not fail a wait that would pass a poll later.
pub async fn until<T, F, Fut>(what: &str, within: Duration, mut check: F) -> Result<T, BoxError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Result<T, String>, BoxError>>,
{
    let deadline = Instant::now() + within;
    loop {
        let last = match check().await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(observed)) => observed,
            Err(error) => format!("request failed: {error}"),
        };
        if Instant::now() >= deadline {
            return Err(format!("{what}: not reached within {within:?}; last seen: {last}").into());
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_value_that_holds_and_names_what_never_did() {
        let mut n = 0;
        let got = until("three polls", Duration::from_secs(5), || {
            n += 1;
            let now = n;
            async move {
                Ok(if now >= 3 {
                    Ok(now)
                } else {
                    Err(format!("at {now}"))
                })
            }
        })
        .await;
        assert_eq!(got.ok(), Some(3));
        let never = until::<(), _, _>("never", Duration::from_millis(10), || async {
            Ok(Err("not yet".to_owned()))
        })
        .await;
        let message = never.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("never: not reached") && message.contains("not yet"),
            "{message}"
        );
    }
}
