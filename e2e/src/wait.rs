//! Waiting for the cluster to reach a state, with a deadline and a failure message that
//! says what was expected and what was last seen.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(250);

/// What one check of a condition found.
pub enum Check<T> {
    /// The condition holds; waiting ends with this value.
    Done(T),
    /// Not yet; the text says what was seen, for the timeout message.
    NotYet(String),
}

/// Checks `check` until it returns `Check::Done`, a check fails with an error, or
/// `timeout` passes; the timeout error names `what` and the last thing seen.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Check<T>>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await? {
            Check::Done(value) => return Ok(value),
            Check::NotYet(seen) => seen,
        };
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                what: what.to_string(),
                seconds: start.elapsed().as_secs_f64(),
                last,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_value_once_the_condition_holds() {
        let mut n = 0;
        let got = wait_until("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            let seen = n;
            async move {
                Ok(if seen >= 3 {
                    Check::Done(seen)
                } else {
                    Check::NotYet(format!("n = {seen}"))
                })
            }
        })
        .await;
        assert_eq!(got.ok(), Some(3));
    }

    #[tokio::test]
    async fn times_out_naming_the_wait_and_the_last_state() {
        let err = wait_until::<(), _, _>("the impossible", Duration::from_millis(300), || async {
            Ok(Check::NotYet("still impossible".into()))
        })
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("the impossible"), "{err}");
        assert!(err.contains("still impossible"), "{err}");
    }
}
