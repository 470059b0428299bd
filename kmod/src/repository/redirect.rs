//! Which redirects a repository client follows: within the origin (scheme, host, port) of
//! the URL asked for, or to a host the policy lists in `repository.allowedRedirectHosts`;
//! never from https to anything else. The operator's index client and the agent's module
//! client share this rule.

use url::Url;

/// Redirects a repository client follows at most per request.
pub const MAX_REDIRECTS: usize = 5;

/// The redirect rule as a reqwest policy: [`redirect_refusal`] for every hop, and at most
/// [`MAX_REDIRECTS`] of them.
#[cfg(feature = "http")]
pub fn redirect_policy(allowed_hosts: Vec<String>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        let refusal = match attempt.previous().first() {
            Some(first) => redirect_refusal(first, attempt.url(), &allowed_hosts),
            None => Some(format!("redirect to {} without a first URL", attempt.url())),
        };
        if let Some(refusal) = refusal {
            attempt.error(refusal)
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else {
            attempt.follow()
        }
    })
}

/// Why a redirect from `first` (the URL asked for) to `next` is not followed; `None` when
/// it may be.
pub fn redirect_refusal(first: &Url, next: &Url, allowed_hosts: &[String]) -> Option<String> {
    if first.scheme() == "https" && next.scheme() != "https" {
        return Some(format!(
            "redirect from {first} to {next} refused: it leaves https for {}, which is never \
             allowed",
            next.scheme()
        ));
    }
    if first.origin() == next.origin() {
        return None;
    }
    let host = next.host_str().unwrap_or_default();
    if allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return None;
    }
    Some(format!(
        "redirect from {first} to {next} refused: host {host} is not the repository's origin \
         {}; to allow it, add {host} to the policy's repository.allowedRedirectHosts \
         (allowed now: {})",
        first.origin().ascii_serialization(),
        if allowed_hosts.is_empty() {
            "none".to_string()
        } else {
            allowed_hosts.join(", ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn same_origin_is_followed_and_another_origin_needs_listing() {
        let first = url("https://repo.example/m/a.ko");
        assert_eq!(
            redirect_refusal(&first, &url("https://repo.example/n/a.ko"), &[]),
            None
        );
        let cdn = url("https://cdn.example/a.ko");
        let refusal = redirect_refusal(&first, &cdn, &[]).unwrap();
        assert!(refusal.contains("cdn.example"), "{refusal}");
        assert!(
            refusal.contains("repository.allowedRedirectHosts"),
            "{refusal}"
        );
        assert_eq!(
            redirect_refusal(&first, &cdn, &["CDN.example".to_string()]),
            None
        );
        // Another port is another origin.
        assert!(redirect_refusal(&first, &url("https://repo.example:8443/a.ko"), &[]).is_some());
    }

    #[test]
    fn https_to_http_is_refused_even_for_a_listed_host() {
        let first = url("https://repo.example/a.ko");
        for next in ["http://repo.example/a.ko", "http://cdn.example/a.ko"] {
            let refusal =
                redirect_refusal(&first, &url(next), &["cdn.example".to_string()]).unwrap();
            assert!(refusal.contains("never"), "{refusal}");
        }
    }

    #[test]
    fn http_to_https_on_another_host_still_needs_listing() {
        let first = url("http://repo.example/a.ko");
        assert!(redirect_refusal(&first, &url("https://repo.example/a.ko"), &[]).is_some());
        assert_eq!(
            redirect_refusal(
                &first,
                &url("https://repo.example/a.ko"),
                &["repo.example".to_string()]
            ),
            None
        );
    }
}
