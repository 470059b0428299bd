//! Reading a Secret a policy names by reference. The operator may `get` only the Secrets
//! the chart lists (never list or watch), so a refusal says which chart value to extend.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

/// Reads Secret `namespace/name`, which policy field `field` names and chart value
/// `chart_value` must list. The error says what is missing and what to do.
pub async fn read(
    client: &Client,
    namespace: &str,
    name: &str,
    field: &str,
    chart_value: &str,
) -> Result<Secret, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(secret)) => Ok(secret),
        Ok(None) => Err(format!(
            "Secret {namespace}/{name} ({field}) does not exist; create it"
        )),
        Err(kube::Error::Api(status)) if status.code == 403 => Err(format!(
            "the operator may not read Secret {namespace}/{name} ({field}); list it in the \
             chart value {chart_value}"
        )),
        Err(error) => Err(format!(
            "reading Secret {namespace}/{name} ({field}) failed: {error}; the operator tries \
             again"
        )),
    }
}
