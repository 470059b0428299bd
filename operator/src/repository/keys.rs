//! The policy's trusted publisher keys: inline `trustedKeys` plus every data value of the
//! Secret `trustedKeysSecret`. A malformed key is skipped and named in the condition message,
//! so one typo does not hide the others; no usable key at all is `NoTrustedKeys`.

use k8s_openapi::api::core::v1::Secret;
use kpersist_crds::RepositorySpec;
use kpersist_kmod::signing::PublicKey;
use kube::Client;

/// The usable keys and what was wrong with the rest.
#[derive(Debug, Default)]
pub struct TrustedKeys {
    /// Keys that parsed.
    pub keys: Vec<PublicKey>,
    /// One line per key or Secret that could not be used.
    pub problems: Vec<String>,
}

/// Parses the inline keys. No client required.
pub fn inline_keys(spec: &RepositorySpec) -> TrustedKeys {
    let mut out = TrustedKeys::default();
    for (i, text) in spec.trusted_keys.iter().enumerate() {
        let origin = format!("repository.trustedKeys[{i}]");
        match PublicKey::from_base64(text, &origin) {
            Ok(key) => out.keys.push(key),
            Err(error) => out.problems.push(error.to_string()),
        }
    }
    out
}

/// Adds the keys of a Secret's data values. No client required.
pub fn add_secret_keys(out: &mut TrustedKeys, secret: &Secret, namespace: &str, name: &str) {
    let Some(data) = secret.data.as_ref().filter(|d| !d.is_empty()) else {
        out.problems.push(format!(
            "Secret {namespace}/{name} has no data; put one public key per data key"
        ));
        return;
    };
    for (field, value) in data {
        let origin = format!("Secret {namespace}/{name} key {field}");
        let parsed = std::str::from_utf8(&value.0)
            .map_err(|_| format!("{origin}: not UTF-8 text; store the key's base64 text"))
            .and_then(|text| PublicKey::from_base64(text, &origin).map_err(|e| e.to_string()));
        match parsed {
            Ok(key) => out.keys.push(key),
            Err(problem) => out.problems.push(problem),
        }
    }
}

/// Collects the inline keys and, when the policy names one, the Secret's. Client required.
#[tracing::instrument(skip_all, fields(url = %spec.url))]
pub async fn trusted_keys(client: &Client, spec: &RepositorySpec) -> TrustedKeys {
    let mut out = inline_keys(spec);
    if let Some(reference) = &spec.trusted_keys_secret {
        let (namespace, name) = (&reference.namespace, &reference.name);
        let field = "repository.trustedKeysSecret";
        let chart_value = "operator.trustedKeysSecrets, or give the keys inline in \
                           repository.trustedKeys";
        match crate::secrets::read(client, namespace, name, field, chart_value).await {
            Ok(secret) => add_secret_keys(&mut out, &secret, namespace, name),
            Err(problem) => out.problems.push(problem),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use kpersist_kmod::signing::PrivateKey;
    use std::collections::BTreeMap;

    fn spec(keys: Vec<String>) -> RepositorySpec {
        serde_json::from_value(serde_json::json!({"url": "http://r", "trustedKeys": keys})).unwrap()
    }

    #[test]
    fn inline_keys_keep_the_good_and_name_the_bad() {
        let good = PrivateKey::generate().public_key().to_base64_line();
        let keys = inline_keys(&spec(vec!["bm90IGEga2V5".into(), good]));
        assert_eq!(keys.keys.len(), 1);
        assert_eq!(keys.problems.len(), 1);
        assert!(
            keys.problems[0].contains("trustedKeys[0]"),
            "{:?}",
            keys.problems
        );
    }

    #[test]
    fn every_secret_value_is_a_key() {
        let a = PrivateKey::generate().public_key().to_base64_line();
        let b = PrivateKey::generate().public_key().to_base64_line();
        let secret = Secret {
            data: Some(BTreeMap::from([
                ("a".to_string(), ByteString(a.into_bytes())),
                ("b".to_string(), ByteString(b.into_bytes())),
                ("c".to_string(), ByteString(vec![0xff])),
            ])),
            ..Secret::default()
        };
        let mut keys = TrustedKeys::default();
        add_secret_keys(&mut keys, &secret, "kpersist", "keys");
        assert_eq!(keys.keys.len(), 2);
        assert_eq!(keys.problems.len(), 1);
        assert!(keys.problems[0].contains("key c"), "{:?}", keys.problems);
    }
}
